"""Secrets in URLs never reach spans; attempt attributes land on the right spans."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otel_integration._client.tracing import AttemptSpanProcessor
from otel_integration._redaction import redact_query, redact_url_secrets


def test_redact_url_secrets():
    url = redact_url_secrets("https://user:pw@api.example/v1?page=2&access_token=abc&API_KEY=k#top")
    assert "pw" not in url and "abc" not in url and "=k" not in url
    assert "page=2" in url and url.endswith("#top")
    assert redact_query("tokenizer=1&token=2") == "tokenizer=1&token=REDACTED"
    assert redact_url_secrets("http://h/p") == "http://h/p"


def test_client_call_with_token_in_url_records_it_redacted(instrument, fault_server):
    instrumented = instrument()
    httpx.get(fault_server.url + "/ok?access_token=s3cret&page=1")
    (span,) = instrumented.client_spans()
    assert "s3cret" not in span.attributes["url.full"]
    assert "access_token=REDACTED" in span.attributes["url.full"]
    assert "page=1" in span.attributes["url.full"]


def test_server_span_query_is_redacted():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(AttemptSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("opentelemetry.instrumentation.asgi")
    tracer.start_span("GET /x", kind=SpanKind.SERVER, attributes={"url.query": "token=abc&q=1"}).end()
    (span,) = exporter.get_finished_spans()
    assert span.attributes["url.query"] == "token=REDACTED&q=1"


def test_spans_outside_httpx_attempts_are_left_alone():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(AttemptSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("other").start_span("work", kind=SpanKind.CLIENT).end()
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {}
