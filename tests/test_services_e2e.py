"""End to end: three real services under opentelemetry-instrument, one OTLP receiver.

front (FastAPI) -> extract (Starlette) -> catalog (plain ASGI), and front -> catalog,
all served by uvicorn on 127.0.0.1, with no OpenTelemetry code in the apps.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from otel_integration.devtools.receiver import OTLPReceiver
from tests.launched import LaunchedService, free_port, service_env, uvicorn_argv
from tests.launched import raw_request as send_raw
from tests.peers import wait_until

pytestmark = pytest.mark.slow

TOKEN = "Bearer e2e-secret-token"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    logdir = tmp_path_factory.mktemp("services")
    receiver = OTLPReceiver().start()
    ports = {name: free_port() for name in ("front", "extract", "catalog")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    common = dict(
        OTEL_INTEGRATION_SERVICES=f"extract={urls['extract']},catalog={urls['catalog']}",
        EXTRACT_URL=urls["extract"],
        CATALOG_URL=urls["catalog"],
    )
    front_env = service_env(
        receiver.endpoint, "front", **common,
        OTEL_INTEGRATION_AUTH_FORWARD_TO="extract",
        OTEL_INTEGRATION_HEALTH_PATH="/healthz",
        OTEL_INTEGRATION_RETRY_ATTEMPTS="1",
        OTEL_INTEGRATION_BREAKER_THRESHOLD="2",
        # Long enough that a busy machine still sees it open; the test polls for half-open.
        OTEL_INTEGRATION_BREAKER_OPEN_SECONDS="6",
    )

    def start(name: str, env: dict[str, str]) -> LaunchedService:
        argv = uvicorn_argv(f"tests.apps.{name}:app", ports[name], "--no-access-log")
        return LaunchedService(name, argv, ports[name], env, logdir)

    services = [
        start("catalog", service_env(receiver.endpoint, "catalog", **common)),
        start("extract", service_env(receiver.endpoint, "extract", **common)),
        start("front", front_env),
    ]
    try:
        deadline = time.monotonic() + 60  # generous: three launchers starting on a busy machine
        for service in services:
            service.wait_ready(deadline)
        yield {s.name: s for s in services}, receiver
    finally:
        for service in services:
            service.stop()
        receiver.stop()


def spans_with_request_id(receiver: OTLPReceiver, request_id: str) -> list[Any]:
    return [s for s in receiver.spans() if s.attributes.get("http.request.header.x-request-id") == (request_id,)
            or s.attributes.get("http.request.header.x-request-id") == [request_id]]


def wait_for_trace(receiver: OTLPReceiver, request_id: str) -> list[Any]:
    """The spans of one /process request, once all have arrived: front -> extract -> catalog, front -> catalog."""

    def complete(rx: OTLPReceiver) -> bool:
        kinds = [s.kind for s in spans_with_request_id(rx, request_id)]
        return kinds.count("SERVER") >= 4 and kinds.count("CLIENT") >= 3

    assert receiver.wait_for(complete), [
        (s.service_name, s.kind, s.name, s.attributes) for s in receiver.spans()[-10:]
    ]
    return spans_with_request_id(receiver, request_id)


def assert_one_trace(receiver: OTLPReceiver, request_id: str) -> None:
    spans = wait_for_trace(receiver, request_id)
    trace_ids = {s.trace_id for s in spans}
    assert len(trace_ids) == 1, trace_ids
    everything = [s for s in receiver.spans() if s.trace_id in trace_ids]
    by_id = {s.span_id: s for s in everything}
    servers = [s for s in everything if s.kind == "SERVER"]
    assert sorted(s.service_name for s in servers) == ["catalog", "catalog", "extract", "front"]
    front = next(s for s in servers if s.service_name == "front")
    assert front.parent_span_id == ""  # the root
    for server in servers:
        if server is front:
            continue
        parent = by_id[server.parent_span_id]  # a CLIENT span of the caller
        assert parent.kind == "CLIENT"
        assert parent.service_name in ("front", "extract") and parent.service_name != server.service_name
        assert parent.attributes.get("peer.service") == server.service_name
    # one request ID on every hop's SERVER and CLIENT spans
    for span in everything:
        if span.kind in ("SERVER", "CLIENT"):
            assert tuple(span.attributes.get("http.request.header.x-request-id", ())) == (request_id,), span


def test_given_request_id_flows_through_every_hop(stack: Any) -> None:
    services, receiver = stack
    response = httpx.get(services["front"].url + "/process", headers={"X-Request-ID": "e2e-given-1"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "e2e-given-1"
    body = response.json()
    assert body["extract"]["request_id"] == "e2e-given-1"
    assert body["extract"]["catalog"]["request_id"] == "e2e-given-1"
    assert body["catalog"]["request_id"] == "e2e-given-1"
    assert_one_trace(receiver, "e2e-given-1")
    for name in ("front", "extract", "catalog"):
        assert "request_id=e2e-given-1" in services[name].log(), services[name].log()
    assert receiver.wait_for(
        lambda rx: {r.service_name for r in rx.logs() if r.attributes.get("request_id") == "e2e-given-1"}
        >= {"front", "extract", "catalog"}
    )


def test_missing_request_id_is_generated_once_for_all_hops(stack: Any) -> None:
    services, receiver = stack
    response = httpx.Client(headers={}).get(services["front"].url + "/process", timeout=10)
    # (the test process itself is not instrumented: no X-Request-ID was sent)
    request_id = response.headers["x-request-id"]
    assert uuid.UUID(request_id).version == 4
    body = response.json()
    assert body["extract"]["request_id"] == body["catalog"]["request_id"] == request_id
    assert_one_trace(receiver, request_id)


def raw_request(port: int, header_line: bytes) -> tuple[int, dict[str, str], bytes]:
    return send_raw(port, b"GET /process HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header_line + b"Connection: close\r\n\r\n")


@pytest.mark.parametrize(
    "bad",
    [b"evil\rInjected: yes", b"x" * 10_000, "h\u00e9llo-\u00fc".encode(), b"has space", b"a;b"],
    ids=["bare-CR", "10KB", "non-ASCII", "space", "semicolon"],
)
def test_bad_request_id_is_never_echoed_logged_or_forwarded(stack: Any, bad: bytes) -> None:
    services, receiver = stack
    status, headers, body = raw_request(services["front"].port, b"X-Request-ID: " + bad + b"\r\n")
    assert "injected" not in headers
    if status == 400:
        return  # uvicorn itself refused the malformed header (bare CR): nothing reached the app
    assert status == 200, body
    request_id = headers["x-request-id"]
    assert uuid.UUID(request_id).version == 4
    assert bad not in body
    assert_one_trace(receiver, request_id)
    marker = bad[:20].decode("latin-1")
    for name in ("front", "extract", "catalog"):
        assert marker not in services[name].log()
    assert all(marker not in repr(s.attributes) for s in receiver.spans())


def test_unhandled_exception_500_carries_the_id(stack: Any) -> None:
    services, receiver = stack
    response = httpx.get(services["front"].url + "/crash", headers={"X-Request-ID": "e2e-crash"}, timeout=10)
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "e2e-crash"
    assert "request_id=e2e-crash" in services["front"].log()
    response = httpx.get(services["front"].url + "/nope", headers={"X-Request-ID": "e2e-404"}, timeout=10)
    assert response.status_code == 404 and response.headers["x-request-id"] == "e2e-404"


def test_auth_forwarded_to_allowlisted_downstream_only(stack: Any) -> None:
    services, receiver = stack
    response = httpx.get(
        services["front"].url + "/process", headers={"X-Request-ID": "e2e-auth", "Authorization": TOKEN}, timeout=10
    )
    body = response.json()
    assert body["extract"]["authorization"] == TOKEN  # front -> extract: allowlisted
    assert body["catalog"]["authorization"] is None  # front -> catalog: not on the list
    assert body["extract"]["catalog"]["authorization"] is None  # extract forwards nothing (off by default)
    asked_at = time.time_ns()
    wait_for_trace(receiver, "e2e-auth")
    # Everything the request produced has been exported: its logs, and a metrics export after it.
    assert receiver.wait_for(
        lambda rx: {r.service_name for r in rx.logs() if r.attributes.get("request_id") == "e2e-auth"}
        >= {"front", "extract", "catalog"}
    )
    assert receiver.wait_for(
        lambda rx: {p.service_name for p in rx.metrics() if p.time_ns > asked_at} >= {"front", "extract", "catalog"}
    )
    secret = "e2e-secret-token"
    assert all(secret not in repr(s.attributes) for s in receiver.spans())
    assert all(secret not in repr(r.attributes) + r.body for r in receiver.logs())
    assert all(secret not in repr(p.attributes) for p in receiver.metrics())
    for name in ("front", "extract", "catalog"):
        assert secret not in services[name].log()


def test_health_endpoint_follows_the_breaker(stack: Any) -> None:
    services, receiver = stack
    front = services["front"].url
    first = httpx.get(front + "/healthz", timeout=10)
    assert first.status_code == 200 and "x-request-id" in first.headers
    assert set(first.json()["dependencies"]) >= {"extract", "catalog"}
    for _ in range(2):
        httpx.get(front + "/fail", timeout=10)
    degraded = httpx.get(front + "/healthz", timeout=10)
    document = degraded.json()
    assert degraded.status_code == 200 and document["status"] == "degraded", document
    assert document["dependencies"]["extract"]["breaker"] == "open"
    assert document["dependencies"]["extract"]["last_error_type"] == "500"
    assert document["dependencies"]["extract"]["latency_ms"]["p95"] is not None
    assert httpx.get(front + "/fail", timeout=10).json()["extract"] == "CircuitOpenError"
    wait_until(
        lambda: httpx.get(front + "/healthz", timeout=10).json()["dependencies"]["extract"]["breaker"] == "half_open",
        what="the breaker half-open after OPEN_SECONDS",
    )
    assert httpx.get(front + "/process", timeout=10).status_code == 200  # a successful trial closes it
    recovered = httpx.get(front + "/healthz", timeout=10).json()
    assert recovered["status"] == "healthy" and recovered["dependencies"]["extract"]["breaker"] == "closed"
