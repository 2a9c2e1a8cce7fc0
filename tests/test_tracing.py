"""Attempt attributes land on the right spans; a token in a client URL is exported redacted."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otel_integration._client.tracing import AttemptSpanProcessor


def test_client_call_with_token_in_url_records_it_redacted(instrument, fault_server):
    instrumented = instrument()
    httpx.get(fault_server.url + "/ok?access_token=s3cret&page=1")
    (span,) = instrumented.client_spans()
    assert "s3cret" not in span.attributes["url.full"]
    assert "access_token=REDACTED" in span.attributes["url.full"]
    assert "page=1" in span.attributes["url.full"]


def test_spans_outside_httpx_attempts_are_left_alone():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(AttemptSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("other").start_span("work", kind=SpanKind.CLIENT).end()
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {}
