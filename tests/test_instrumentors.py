"""The instrumentors never raise, wire the client features themselves, and keep one owner of per-downstream state."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from otel_integration import OtelIntegrationInstrumentor, ServerInstrumentor, instrument_client
from otel_integration._client import instrumentor as client_instrumentor
from otel_integration._client import layer as layers
from otel_integration._server import health
from otel_integration._settings import Settings
from otel_integration.errors import CircuitOpenError
from tests.conftest import FAST
from tests.peers import QuickFaultServer


def test_a_failing_layer_falls_back_to_the_defaults_with_one_error(monkeypatch, caplog, fault_server):
    real = client_instrumentor.ResilienceLayer
    built: list[Settings] = []

    def picky(settings: Settings, **kwargs: Any) -> Any:
        built.append(settings)
        if settings.retry_attempts == 7:
            raise RuntimeError("a bug in the distro")
        return real(settings, **kwargs)

    monkeypatch.setattr(client_instrumentor, "ResilienceLayer", picky)
    instrumentor = OtelIntegrationInstrumentor()
    with caplog.at_level(logging.ERROR):
        instrumentor.instrument(settings=replace(Settings(), retry_attempts=7))
    try:
        assert [s.retry_attempts for s in built] == [7, 3]
        assert len([r for r in caplog.records if "using the defaults" in r.getMessage()]) == 1
        assert httpx.get(fault_server.url + "/flaky/d?fail=1").status_code == 200  # the default layer retries
    finally:
        instrumentor.uninstrument()


def test_instrument_never_raises_even_when_the_defaults_fail_too(monkeypatch, caplog, fault_server):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the distro")

    monkeypatch.setattr(client_instrumentor, "ResilienceLayer", broken)
    upstream = HTTPXClientInstrumentor()
    upstream.instrument()
    instrumentor = OtelIntegrationInstrumentor()
    try:
        instrumentor.instrument(settings=Settings())  # must not raise
        assert layers.active() is None
        assert httpx.get(fault_server.url + "/ok").status_code == 200  # httpx untouched, upstream still on
        assert "left as they are" in caplog.text
    finally:
        instrumentor.uninstrument()
        upstream.uninstrument()


def test_the_server_instrumentor_never_raises(monkeypatch, caplog):
    from otel_integration._server import instrumentor as server_instrumentor

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the distro")

    monkeypatch.setattr(server_instrumentor.ServerInstrumentor, "_patch_starlette", broken)
    instrumentor = ServerInstrumentor()
    try:
        instrumentor.instrument(settings=Settings())
        assert "could not set up request IDs" in caplog.text
    finally:
        instrumentor.uninstrument()


def test_probes_work_with_the_client_instrumentor_alone(instrument, fault_server):
    """The issue's case: probes were wired by the server instrumentor; disabled, they silently stopped."""
    from otel_integration.errors import DownstreamUnhealthyError
    from tests.peers import wait_until

    with QuickFaultServer() as probe_target:
        inst = instrument(
            services={"extract": fault_server.url.removeprefix("http://")},
            health_probes={"extract": probe_target.url + "/status/503"},
        )
        assert not ServerInstrumentor().is_instrumented_by_opentelemetry
        wait_until(lambda: inst.layer.downstreams.probes["extract"].healthy is False, what="the probe's result")
        with pytest.raises(DownstreamUnhealthyError):
            httpx.get(fault_server.url + "/ok")
    assert fault_server.requests == []


def test_an_open_breaker_stays_in_the_one_lru_the_health_endpoint_reads(instrument, fault_server):
    """The issue's case: the breaker registry (FIFO) and the layer (LRU) disagreed; /healthz said closed."""
    inst = instrument(max_downstreams=2, breaker_threshold=1, retry_attempts=1)
    key = f"127.0.0.1:{fault_server.port}"
    with QuickFaultServer() as b, QuickFaultServer() as c, httpx.Client() as client:
        client.get(fault_server.url + "/status/500")  # opens
        for other in (b, c, b, c):
            client.get(other.url + "/ok")
            with pytest.raises(CircuitOpenError):  # still failing calls: recently used, so kept
                client.get(fault_server.url + "/ok")
        document = health.report(inst.layer)[1]
    assert document["dependencies"][key]["breaker"] == "open"
    assert len(inst.layer.downstreams) == 2


def test_an_evicted_downstream_stops_being_reported(instrument, fault_server):
    inst = instrument(max_downstreams=1)
    with QuickFaultServer() as other, httpx.Client() as client:
        client.get(fault_server.url + "/ok")
        client.get(other.url + "/ok")
        ports = {a.get("server.port") for a, _ in inst.metric_points("http.client.circuit_breaker.state")}
        dependencies = set(health.report(inst.layer)[1]["dependencies"])
    assert ports == {other.port}
    assert dependencies == {f"127.0.0.1:{other.port}"}


def test_the_breaker_gauge_reports_the_state_at_collection_time_without_traffic(instrument, fault_server, clock):
    """Issue 12: an open breaker kept exporting 2 after its open time, while /healthz said half_open."""
    inst = instrument(clock=clock, retry_attempts=1, breaker_threshold=1, breaker_open_seconds=1)
    with httpx.Client() as client:
        client.get(fault_server.url + "/status/500")

    def gauge() -> list[float]:
        return [p.value for a, p in inst.metric_points("http.client.circuit_breaker.state")
                if a.get("server.port") == fault_server.port]

    assert gauge() == [2]  # open
    clock.advance(1.5)  # no call in between: only time passes
    assert gauge() == [1]  # half-open, as the breaker itself says
    assert health.report(inst.layer)[1]["dependencies"][f"127.0.0.1:{fault_server.port}"]["breaker"] == "half_open"


def test_instrument_client_puts_one_client_behind_the_layer(fault_server):
    layer = layers.ResilienceLayer(replace(Settings(), **FAST))
    try:
        plain = httpx.Client()
        client = instrument_client(httpx.Client(mounts={"http://mounted.test": httpx.HTTPTransport()}), layer)
        assert client.get(fault_server.url + "/flaky/i?fail=1").status_code == 200  # retried
        assert plain.get(fault_server.url + "/flaky/j?fail=1").status_code == 503  # another client: untouched
        assert instrument_client(client, layer)._transport is client._transport  # never wrapped twice
        client.close()
        plain.close()
    finally:
        layer.close()


def test_uvicorn_is_patched_when_the_app_imports_it_not_at_start_up(tmp_path) -> None:
    """Start-up of a service that does not run uvicorn imports none of it (it was 19 ms)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "before = 'uvicorn.config' in sys.modules\n"
        "from uvicorn.config import Config\n"
        "print(before, hasattr(Config.load, '__wrapped__'))\n"
    )
    launcher = str(Path(sys.executable).parent / "opentelemetry-instrument")
    env = {"PATH": str(Path(sys.executable).parent), "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none"}
    done = subprocess.run([launcher, sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stderr
