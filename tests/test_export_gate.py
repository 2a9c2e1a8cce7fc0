"""The export gate with the real OTLP/HTTP exporter, against a collector that answers 503."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_integration import _export_gate
from tests.test_shutdown_e2e import Unavailable


def finished_spans(count: int) -> list:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for i in range(count):
        provider.get_tracer("t").start_span(f"s{i}").end()
    return list(memory.get_finished_spans())


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_an_unavailable_collector_closes_the_gate_with_one_line_and_no_retry(
    status: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = Unavailable(status)
    try:
        endpoint = f"http://127.0.0.1:{collector.port}/v1/traces"
        for name in _export_gate.EXPORTER_LOGGERS:
            monkeypatch.setattr(logging.getLogger(name), "filters", [_export_gate.GATE_LOG_FILTER])
        exporter = OTLPSpanExporter(endpoint=endpoint, session=_export_gate.GatedSession())
        caplog.set_level(logging.INFO)
        spans = finished_spans(2)
        assert exporter.export(spans[:1]) is SpanExportResult.FAILURE
        assert exporter.export(spans[1:]) is SpanExportResult.FAILURE  # the gate is closed: not sent
        assert collector.requests == 1  # one try, no retry with backoff
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and f"it answered HTTP {status}" in lines[0], lines
    finally:
        collector.close()
