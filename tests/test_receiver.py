"""The embedded OTLP/HTTP receiver, fed by the real SDK exporters over real HTTP."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import Observation
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry._logs import SeverityNumber
from opentelemetry.context import get_current
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_integration.devtools.receiver import OTLPReceiver

RESOURCE = Resource.create({"service.name": "checkout", "deployment.environment": "test"})


@pytest.fixture()
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rx:
        yield rx


def _tracer_provider(rx: OTLPReceiver, **exporter_kwargs: object) -> TracerProvider:
    provider = TracerProvider(resource=RESOURCE)
    exporter = OTLPSpanExporter(endpoint=rx.endpoint + "/v1/traces", timeout=5, **exporter_kwargs)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _post(rx: OTLPReceiver, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _export_one_span(rx: OTLPReceiver, name: str) -> None:
    provider = _tracer_provider(rx)
    provider.get_tracer("t").start_span(name).end()
    provider.shutdown()


# --------------------------------------------------------------------------- traces


def test_spans_from_the_sdk_exporter_are_decoded(receiver: OTLPReceiver) -> None:
    provider = _tracer_provider(receiver)
    tracer = provider.get_tracer("checkout.tests", "1.0")
    with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as server:
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as client:
            client.set_attribute("http.response.status_code", 503)
            client.set_attribute("http.request.resend_count", 2)
            client.set_attribute("http.request.header.x-request-id", ["req-42"])
            client.set_attribute("retry.delays", [0.1, 0.2])
            client.set_attribute("cache.hit", False)
            client.add_event("retry", {"attempt": 1})
            client.set_status(Status(StatusCode.ERROR, "upstream 503"))
    provider.shutdown()

    spans = {s.name: s for s in receiver.spans()}
    assert set(spans) == {"POST /orders", "GET"}
    srv, cli = spans["POST /orders"], spans["GET"]
    sctx, cctx = server.get_span_context(), client.get_span_context()
    assert srv.trace_id == format(sctx.trace_id, "032x") == cli.trace_id
    assert srv.span_id == format(sctx.span_id, "016x")
    assert cli.span_id == format(cctx.span_id, "016x")
    assert cli.parent_span_id == srv.span_id
    assert srv.parent_span_id == ""
    assert (srv.kind, cli.kind) == ("SERVER", "CLIENT")
    assert (cli.status_code, cli.status_message) == ("ERROR", "upstream 503")
    assert srv.status_code == "UNSET"
    assert cli.attributes["http.response.status_code"] == 503
    assert cli.attributes["http.request.resend_count"] == 2
    assert cli.attributes["http.request.header.x-request-id"] == ("req-42",)
    assert cli.attributes["retry.delays"] == (0.1, 0.2)
    assert cli.attributes["cache.hit"] is False
    assert cli.events == [("retry", {"attempt": 1})]
    assert cli.resource["service.name"] == "checkout" == cli.service_name
    assert cli.scope_name == "checkout.tests"
    assert 0 < srv.start_ns <= cli.start_ns <= cli.end_ns <= srv.end_ns


def test_gzip_compressed_exports_are_decoded(receiver: OTLPReceiver) -> None:
    provider = _tracer_provider(receiver, compression=Compression.Gzip)
    provider.get_tracer("t").start_span("compressed").end()
    provider.shutdown()

    assert [s.name for s in receiver.spans()] == ["compressed"]
    (request,) = receiver.requests()
    assert (request.path, request.status, request.content_encoding) == ("/v1/traces", 200, "gzip")


def test_response_is_the_empty_protobuf_export_response(receiver: OTLPReceiver) -> None:
    body = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
    status, payload = _post(receiver, "/v1/traces", body,
                            {"Content-Type": "application/x-protobuf"})
    assert status == 200
    response = trace_service_pb2.ExportTraceServiceResponse()
    response.ParseFromString(payload)
    assert not response.HasField("partial_success")


def test_otlp_json_with_hex_ids_is_accepted(receiver: OTLPReceiver) -> None:
    document = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
        "scopeSpans": [{"scope": {"name": "s"}, "spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "eee19b7ec3c1b173",
            "name": "json-span", "kind": 3,
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": "1544712661000000000",
            "attributes": [{"key": "n", "value": {"intValue": "7"}}],
            "status": {"code": 2},
        }]}],
    }]}
    body = gzip.compress(json.dumps(document).encode())
    status, payload = _post(receiver, "/v1/traces", body,
                            {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 200 and json.loads(payload) == {}
    (span,) = receiver.spans()
    assert span.trace_id == "5b8efff798038103d269b633813fc60c"
    assert span.parent_span_id == "eee19b7ec3c1b173"
    assert (span.kind, span.status_code, span.attributes) == ("CLIENT", "ERROR", {"n": 7})
    assert span.service_name == "js"


# --------------------------------------------------------------------------- metrics, logs


def test_metrics_from_the_sdk_exporter_are_flattened(receiver: OTLPReceiver) -> None:
    exporter = OTLPMetricExporter(endpoint=receiver.endpoint + "/v1/metrics", timeout=5)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    meter = provider.get_meter("otel_integration")
    target = {"server.address": "inventory", "server.port": 8080}
    meter.create_counter("http.client.retries", unit="{retry}").add(3, target)
    meter.create_up_down_counter("http.client.circuit_breaker.state").add(1, target)
    histogram = meter.create_histogram("http.client.request.duration", unit="s")
    for seconds in (0.002, 0.004, 0.3):
        histogram.record(seconds, target)
    meter.create_observable_gauge("queue.depth", callbacks=[lambda _: [Observation(2.5)]])
    assert provider.force_flush(timeout_millis=5000)
    provider.shutdown()

    points = {p.name: p for p in receiver.metrics()}
    retries = points["http.client.retries"]
    assert (retries.kind, retries.value, retries.is_monotonic) == ("sum", 3, True)
    assert retries.unit == "{retry}" and retries.temporality == "CUMULATIVE"
    assert retries.attributes == target and retries.service_name == "checkout"
    state = points["http.client.circuit_breaker.state"]
    assert (state.kind, state.value, state.is_monotonic) == ("sum", 1, False)
    duration = points["http.client.request.duration"]
    assert duration.kind == "histogram" and duration.unit == "s"
    assert duration.count == 3 and duration.sum == pytest.approx(0.306)
    assert sum(duration.bucket_counts) == 3
    assert len(duration.bucket_counts) == len(duration.explicit_bounds) + 1
    assert (duration.min, duration.max) == (0.002, 0.3)
    gauge = points["queue.depth"]
    assert (gauge.kind, gauge.value, gauge.is_monotonic) == ("gauge", 2.5, None)


def test_logs_from_the_sdk_exporter_keep_trace_correlation(receiver: OTLPReceiver) -> None:
    log_provider = LoggerProvider(resource=RESOURCE)
    log_provider.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(endpoint=receiver.endpoint + "/v1/logs", timeout=5)))
    logger = log_provider.get_logger("tests.receiver")
    tracer = TracerProvider(resource=RESOURCE).get_tracer("t")
    try:
        with tracer.start_as_current_span("work") as span:
            logger.emit(
                body="payment p-1 declined",
                severity_number=SeverityNumber.WARN,
                severity_text="WARN",
                attributes={"order.id": "o-9"},
                context=get_current(),
            )
    finally:
        log_provider.shutdown()

    (record,) = receiver.logs()
    assert record.body == "payment p-1 declined"
    assert (record.severity_text, record.severity_number) == ("WARN", SeverityNumber.WARN.value)
    assert record.attributes == {"order.id": "o-9"}
    assert record.trace_id == format(span.get_span_context().trace_id, "032x")
    assert record.span_id == format(span.get_span_context().span_id, "016x")
    assert record.resource["service.name"] == "checkout"
    assert record.scope_name == "tests.receiver"


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "application/x-protobuf"}, b"\xff\xff\xff\xff garbage", 400),
        ({"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, b"not gzip", 400),
        ({"Content-Type": "application/json"}, b"{not json", 400),
        ({"Content-Type": "application/json"}, b"[1, 2]", 400),
        ({"Content-Type": "text/plain"}, b"hello", 415),
        ({"Content-Type": "application/x-protobuf", "Content-Encoding": "br"}, b"x", 415),
    ],
)
def test_bad_requests_are_rejected_and_the_receiver_keeps_working(
    receiver: OTLPReceiver, headers: dict[str, str], body: bytes, status: int
) -> None:
    assert _post(receiver, "/v1/traces", body, headers)[0] == status
    assert receiver.spans() == []
    _export_one_span(receiver, "after-garbage")
    assert [s.name for s in receiver.spans()] == ["after-garbage"]


def test_unknown_path_and_method(receiver: OTLPReceiver) -> None:
    assert _post(receiver, "/v1/profiles", b"", {"Content-Type": "application/x-protobuf"})[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    conn.request("GET", "/v1/traces")
    assert conn.getresponse().status == 405
    conn.close()


def test_oversize_bodies_get_413() -> None:
    with OTLPReceiver(max_body_size=1024) as rx:
        headers = {"Content-Type": "application/x-protobuf"}
        assert _post(rx, "/v1/traces", b"\x00" * 2048, headers)[0] == 413
        # A gzip bomb: tiny on the wire, over the bound once inflated.
        bomb = gzip.compress(b"\x00" * 100_000)
        assert len(bomb) < 1024
        assert _post(rx, "/v1/traces", bomb, {**headers, "Content-Encoding": "gzip"})[0] == 413
        _export_one_span(rx, "small")
        assert [s.name for s in rx.spans()] == ["small"]


def test_a_huge_content_length_is_refused_before_reading_the_body(receiver: OTLPReceiver) -> None:
    # Claim 17 MiB but send nothing: the answer must come without waiting for the body.
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-protobuf\r\n"
                     b"Content-Length: 17825792\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


# --------------------------------------------------------------------------- API


def test_wait_for_clear_on_spans_and_restart() -> None:
    batches: list[list[str]] = []
    rx = OTLPReceiver(on_spans=lambda spans: batches.append([s.name for s in spans]))
    with pytest.raises(RuntimeError):
        rx.endpoint  # noqa: B018 - not started yet
    with rx:
        assert rx.endpoint == f"http://127.0.0.1:{rx.port}" and rx.port > 0
        assert rx.wait_for(lambda r: bool(r.spans()), timeout=0.05) is False
        _export_one_span(rx, "one")
        assert rx.wait_for(lambda r: len(r.spans()) == 1, timeout=5)
        assert batches == [["one"]]
        rx.clear()
        assert rx.spans() == [] and rx.requests() == []
    rx.stop()  # idempotent


def test_a_failing_on_spans_callback_does_not_fail_exports(receiver: OTLPReceiver) -> None:
    def boom(spans: object) -> None:
        raise RuntimeError("viewer bug")

    receiver.on_spans = boom
    _export_one_span(receiver, "still-stored")
    assert [s.name for s in receiver.spans()] == ["still-stored"]
    assert receiver.requests()[-1].status == 200


def test_cli_prints_a_received_trace() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "otel_integration.devtools.receive", "--port", "0", "--duration", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith("listening on http://127.0.0.1:")
        endpoint = banner.split()[2]
        provider = TracerProvider(resource=Resource.create({"service.name": "cli-test"}))
        provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint + "/v1/traces", timeout=5)))
        with provider.get_tracer("t").start_as_current_span("parent"):
            provider.get_tracer("t").start_span("child").end()
        provider.shutdown()
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "cli-test" in out and "parent" in out
    assert "└─ cli-test: child" in out
    assert "received 2 spans" in out


def test_endpoint_works_as_otel_exporter_otlp_endpoint(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The way the distro and the demo use it: the base URL, signal paths appended by the SDK.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(timeout=5)))
    provider.get_tracer("t").start_span("via-env").end()
    provider.shutdown()
    assert [s.name for s in receiver.spans()] == ["via-env"]
    assert receiver.requests()[0].path == "/v1/traces"


def test_stop_hangs_up_on_keep_alive_connections() -> None:
    rx = OTLPReceiver().start()
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=5)
    body = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
    conn.request("POST", "/v1/traces", body=body,
                 headers={"Content-Type": "application/x-protobuf"})
    assert conn.getresponse().read() == b""
    stopping = threading.Thread(target=rx.stop)
    stopping.start()
    stopping.join(30)  # only bounds a hang: stop() must not wait for the idle kept-alive client
    assert not stopping.is_alive()
    # The kept-alive connection must not be served by a stopped receiver.
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("POST", "/v1/traces", body=body,
                     headers={"Content-Type": "application/x-protobuf"})
        conn.getresponse()
    conn.close()
    assert len(rx.requests()) == 1


def test_rejected_bodies_do_not_poison_a_kept_alive_connection(receiver: OTLPReceiver) -> None:
    # A request rejected before its body was read (404, 415, 413...) leaves the body on
    # the socket; were the connection kept, that body would be parsed as a request.
    smuggled = b"GET /v1/traces HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/nope HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-protobuf\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        reply = b""
        while chunk := sock.recv(65536):  # the server hangs up: recv returns b""
            reply += chunk
    assert reply.count(b"HTTP/1.1 ") == 1
    assert reply.startswith(b"HTTP/1.1 404") and b"Connection: close" in reply


def test_chunked_request_bodies_are_accepted(receiver: OTLPReceiver) -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="chunked")
    body = request.SerializeToString()
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    try:
        conn.request("POST", "/v1/traces", body=iter([body[:5], body[5:]]),
                     headers={"Content-Type": "application/x-protobuf"}, encode_chunked=True)
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    (span,) = receiver.spans()
    assert (span.name, span.trace_id, span.span_id) == ("chunked", "01" * 16, "02" * 8)
