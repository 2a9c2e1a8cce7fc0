"""Dependency health: statistics, breaker-driven status, endpoint, active probes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import httpx
import pytest

from otel_integration import RequestIdMiddleware
from otel_integration._client import probes
from otel_integration._client.downstreams import WINDOW, AttemptStats
from otel_integration._client.layer import ResilienceLayer
from otel_integration._server import health
from otel_integration._settings import Settings
from otel_integration.errors import DownstreamUnhealthyError
from tests.peers import FaultServer, wait_until
from tests.test_server import run_asgi


def addr(server: FaultServer) -> str:
    return server.url.removeprefix("http://")


class HealthView:
    """What the endpoint reads, from one layer."""

    def __init__(self, layer: ResilienceLayer) -> None:
        self.layer = layer

    def report(self) -> tuple[int, dict[str, Any]]:
        return health.report(self.layer)

    def stats(self, key: str) -> AttemptStats:
        return next(d.stats for d in self.layer.downstreams if d.key == key)

    @property
    def probes(self) -> dict[str, probes.Probe]:
        return self.layer.downstreams.probes


def setup(instrument: Any, **settings: Any) -> tuple[Any, HealthView]:
    settings.setdefault("health_path", "/healthz")  # the endpoint is served: its statistics are kept
    inst = instrument(**settings)
    return inst, HealthView(inst.layer)


def test_latency_and_last_error_per_downstream(instrument: Any, fault_server: FaultServer) -> None:
    _, state = setup(instrument, services={"extract": addr(fault_server)}, retry_attempts=1)
    for _ in range(3):
        httpx.get(fault_server.url + "/ok")
    httpx.get(fault_server.url + "/status/500")
    status, body = state.report()
    dep = body["dependencies"]["extract"]
    assert status == 200 and body["status"] == "healthy"
    assert dep["status"] == "healthy" and dep["breaker"] == "closed"
    assert 0 < dep["latency_ms"]["last"] <= dep["latency_ms"]["p95"]  # p95 of 4 values: their maximum
    assert dep["last_error_type"] == "500"
    assert len(state.stats("extract").latencies_ms) == 4


def test_ring_buffer_is_bounded() -> None:
    stats = AttemptStats()
    for i in range(WINDOW * 3):
        stats.record(float(i), None)
    assert len(stats.latencies_ms) == WINDOW
    assert stats.latency()["last"] == float(WINDOW * 3 - 1)


def test_unnamed_downstreams_are_keyed_by_host_port(instrument: Any, fault_server: FaultServer) -> None:
    _, state = setup(instrument)
    httpx.get(fault_server.url + "/ok")
    assert addr(fault_server) in state.report()[1]["dependencies"]


def test_states_follow_the_breakers(instrument: Any, fault_server: FaultServer, clock: Any) -> None:
    with FaultServer() as other:
        _, state = setup(
            instrument,
            clock=clock,
            services={"extract": addr(fault_server), "catalog": addr(other)},
            retry_attempts=1, breaker_threshold=2, breaker_open_seconds=30,
        )
        assert state.report() == (200, {"status": "healthy", "dependencies": state.report()[1]["dependencies"]})
        for _ in range(2):
            httpx.get(fault_server.url + "/status/503")
        status, body = state.report()
        assert body["dependencies"]["extract"]["breaker"] == "open"
        assert body["dependencies"]["extract"]["status"] == "unhealthy"
        assert body["dependencies"]["catalog"]["status"] == "healthy"
        assert (status, body["status"]) == (200, "degraded")  # all_open: one of two is open
        for _ in range(2):
            httpx.get(other.url + "/status/503")
        assert state.report()[0] == 503 and state.report()[1]["status"] == "unhealthy"
        clock.advance(31)
        body = state.report()[1]
        assert body["dependencies"]["extract"]["breaker"] == "half_open" and body["status"] == "degraded"
        httpx.get(fault_server.url + "/ok")
        httpx.get(other.url + "/ok")
        assert state.report() == (200, state.report()[1]) and state.report()[1]["status"] == "healthy"


@pytest.mark.parametrize(("rule", "expected"), [("any_open", 503), ("never", 200), ("all_open", 200)])
def test_unhealthy_when_rule(instrument: Any, fault_server: FaultServer, rule: str, expected: int) -> None:
    _, state = setup(
        instrument,
        services={"extract": addr(fault_server), "catalog": "127.0.0.1:9"},
        retry_attempts=1, breaker_threshold=1, health_unhealthy_when=rule,
    )
    httpx.get(fault_server.url + "/status/500")
    assert state.report()[0] == expected


def test_endpoint_served_by_the_middleware_only_when_configured(instrument: Any, fault_server: FaultServer) -> None:
    setup(instrument, services={"extract": addr(fault_server)})

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    status, headers, body, _ = run_asgi(RequestIdMiddleware(app, replace(Settings(), health_path="/healthz")), "/healthz")
    assert status == 200 and headers["content-type"] == ["application/json"] and "x-request-id" in headers
    document = json.loads(body)
    assert document["status"] == "healthy" and set(document["dependencies"]) == {"extract"}
    assert set(document["dependencies"]["extract"]) >= {"status", "breaker", "latency_ms", "last_error_type"}
    status, _, _, _ = run_asgi(RequestIdMiddleware(app, Settings()), "/healthz")
    assert status == 204  # not configured: the app's own route


def test_wsgi_endpoint(instrument: Any) -> None:
    from otel_integration import RequestIdWSGIMiddleware
    from tests.test_server import run_wsgi

    setup(instrument)
    app = RequestIdWSGIMiddleware(lambda environ, start: [], replace(Settings(), health_path="/health"))
    status, headers, body = run_wsgi(app, "/health")
    assert status == 200 and json.loads(body)["status"] == "healthy"


def test_failing_probe_fails_calls_fast_and_sets_the_gauge(
    instrument: Any, fault_server: FaultServer, clock: Any
) -> None:
    with FaultServer() as probe_target:
        inst, state = setup(
            instrument,
            clock=clock,
            services={"extract": addr(fault_server)},
            health_probes={"extract": probe_target.url + "/flaky/p?fail=1&status=503"},
            health_probe_ttl=30,
        )
        # The first result, before the first call (which would wait for it only briefly).
        wait_until(lambda: state.probes["extract"].healthy is not None, what="first probe result")
        with pytest.raises(DownstreamUnhealthyError) as raised:
            httpx.get(fault_server.url + "/ok")
        assert raised.value.downstream == "extract"
        assert isinstance(raised.value, httpx.TransportError)  # existing except blocks still catch it
        assert fault_server.requests == []  # no I/O to the unhealthy downstream
        body = state.report()[1]
        assert body["dependencies"]["extract"]["probe"] == "failing"
        assert body["dependencies"]["extract"]["status"] == "unhealthy"
        points = inst.metric_points("http.client.dependency.health")
        assert [(a.get("peer.service"), p.value) for a, p in points] == [("extract", 0)]
        rejected = [s for s in inst.client_spans() if s.attributes.get("error.type", "").endswith("DownstreamUnhealthyError")]
        assert rejected
        # the probe recovers (second probe request answers 200), at most once per TTL
        clock.advance(31)
        try:
            httpx.get(fault_server.url + "/ok")
        except DownstreamUnhealthyError:
            pass  # the stale result is served while the refresh runs in the background
        wait_until(lambda: state.probes["extract"].healthy is True)
        assert httpx.get(fault_server.url + "/ok").status_code == 200
        points = inst.metric_points("http.client.dependency.health")
        assert [p.value for _, p in points] == [1]
        assert len(probe_target.requests) == 2


def test_probe_check_timeout_and_errors() -> None:
    from tests.peers import closed_port

    ok, error = probes.check(f"http://127.0.0.1:{closed_port()}/healthz", timeout=0.5)
    assert not ok and error == "ConnectionRefusedError"
    with FaultServer() as server:
        assert probes.check(server.url + "/ok") == (True, None)
        assert probes.check(server.url + "/status/503") == (False, "503")
        assert probes.check(server.url + "/slow?delay=1", timeout=0.2) == (False, "TimeoutError")


# --- per-service overrides (OTEL_INTEGRATION_SERVICE_<NAME>_<SETTING>) ------------------------


def test_service_overrides_are_parsed_and_validated() -> None:
    environ = {
        "OTEL_INTEGRATION_SERVICES": "extract=http://extract:8081,doc-store=store:9000",
        "OTEL_INTEGRATION_SERVICE_EXTRACT_RETRY_ATTEMPTS": "5",
        "OTEL_INTEGRATION_SERVICE_EXTRACT_BREAKER_FAILURE_STATUS_CODES": "5xx,429",
        "OTEL_INTEGRATION_SERVICE_DOC_STORE_RETRY_DEADLINE": "2.5",
        "OTEL_INTEGRATION_SERVICE_EXTRACT_BREAKER_THRESHOLD": "zero",
        "OTEL_INTEGRATION_SERVICE_NOPE_RETRY_ATTEMPTS": "2",
        "OTEL_INTEGRATION_SERVICE_EXTRACT_COLOR": "blue",
    }
    settings, problems = Settings.parse(environ)
    assert settings.retry_attempts == 3
    extract = settings.for_service("extract")
    assert extract.retry_attempts == 5 and 429 in extract.breaker_failure_status_codes
    assert extract.breaker_threshold == settings.breaker_threshold  # the bad value fell back
    assert settings.for_service("doc-store").retry_deadline == 2.5
    assert settings.for_service("other") is settings and settings.for_service(None) is settings
    assert (
        "OTEL_INTEGRATION_SERVICE_EXTRACT_BREAKER_THRESHOLD='zero' is invalid: expected an integer from 1 to 1000000; "
        "using the global OTEL_INTEGRATION_BREAKER_THRESHOLD value" in problems
    )
    assert any(p.startswith("OTEL_INTEGRATION_SERVICE_NOPE_RETRY_ATTEMPTS names no service") for p in problems)
    assert "OTEL_INTEGRATION_SERVICE_EXTRACT_COLOR is not a known setting; it is ignored" in problems
    assert len(problems) == 3


def test_service_overrides_reach_the_transport_and_breaker(instrument: Any, fault_server: FaultServer) -> None:
    with FaultServer() as other:
        _, state = setup(
            instrument,
            services={"extract": addr(fault_server), "catalog": addr(other)},
            retry_attempts=1,
            service_overrides={"extract": {"breaker_threshold": 1, "retry_attempts": 2}},
        )
        httpx.get(fault_server.url + "/status/503")  # threshold 1 (override): open after the first attempt
        assert len(fault_server.requests) == 1  # so its second attempt (override) is not made
        httpx.get(other.url + "/status/503")  # global threshold 5: still closed
        body = state.report()[1]
        assert body["dependencies"]["extract"]["breaker"] == "open"
        assert body["dependencies"]["catalog"]["breaker"] == "closed"
        with pytest.raises(httpx.TransportError):
            httpx.get(fault_server.url + "/ok")
