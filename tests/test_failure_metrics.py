"""Every attempt, failed ones included, is in http.client.request.duration exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from otel_integration._client import attempt_metrics
from otel_integration.devtools.receiver import OTLPReceiver
from otel_integration.errors import CircuitOpenError
from tests.peers import closed_port

DURATION = "http.client.request.duration"


def duration_points(inst: Any) -> list[tuple[dict[str, Any], Any]]:
    return inst.metric_points(DURATION)


def call(kind: str, url: str, **kwargs: Any) -> Any:
    if kind == "sync":
        with httpx.Client(**kwargs) as client:
            return client.get(url)

    async def main() -> Any:
        async with httpx.AsyncClient(**kwargs) as client:
            return await client.get(url)

    return asyncio.run(main())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_refused_connections_are_recorded_once_per_attempt(instrument, kind):
    inst = instrument(breaker_threshold=100)
    port = closed_port()
    with pytest.raises(httpx.ConnectError):
        call(kind, f"http://127.0.0.1:{port}/x")
    (point,) = [(a, p) for a, p in duration_points(inst) if a.get("server.port") == port]
    attributes, data = point
    assert data.count == 3  # three attempts, each once
    assert attributes == {
        "http.request.method": "GET", "server.address": "127.0.0.1", "server.port": port, "error.type": "ConnectError",
    }


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_read_timeouts_are_recorded(instrument, fault_server, kind):
    inst = instrument(breaker_threshold=100)
    with pytest.raises(httpx.ReadTimeout):
        call(kind, f"{fault_server.url}/slow?delay=1", timeout=httpx.Timeout(5.0, read=0.1))
    points = [(a, p) for a, p in duration_points(inst) if a.get("error.type") == "ReadTimeout"]
    assert len(points) == 1 and points[0][1].count == 3
    assert points[0][1].sum >= 3 * 0.1  # each attempt waited for its timeout


def test_failures_and_answers_share_the_upstream_series(instrument, fault_server):
    inst = instrument(breaker_threshold=100, retry_attempts=1)
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/ok")
        client.get(f"{fault_server.url}/status/503")
        with pytest.raises(httpx.ReadTimeout):
            client.get(f"{fault_server.url}/slow?delay=1", timeout=httpx.Timeout(5.0, read=0.1))
    data = inst.metric_reader.get_metrics_data()
    scopes = {
        sm.scope.name for rm in data.resource_metrics for sm in rm.scope_metrics
        if any(m.name == DURATION for m in sm.metrics)
    }
    assert scopes == {attempt_metrics.UPSTREAM_SCOPE}  # one instrument: ours records into the upstream's
    by_error = {a.get("error.type"): set(a) for a, _ in duration_points(inst)}
    common = {"http.request.method", "server.address", "server.port"}
    assert by_error[None] == common | {"http.response.status_code", "network.protocol.version"}
    assert by_error["503"] == common | {"http.response.status_code", "network.protocol.version", "error.type"}
    assert by_error["ReadTimeout"] == common | {"error.type"}


def test_a_refused_call_sent_nothing_and_is_not_a_request(instrument, fault_server):
    inst = instrument(breaker_threshold=1, retry_attempts=1)
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/status/500")
        with pytest.raises(CircuitOpenError):
            client.get(f"{fault_server.url}/ok")
    assert sum(p.count for _, p in duration_points(inst)) == 1  # the 500 only
    assert inst.counter_total("http.client.circuit_breaker.rejections") == 1


def test_transports_the_upstream_does_not_measure_are_not_measured_here_either(instrument):
    inst = instrument()

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with httpx.Client(transport=httpx.MockTransport(handler)) as client, pytest.raises(httpx.ConnectError):
        client.get("http://mock.test/")
    assert duration_points(inst) == []


def test_the_installed_upstream_is_verified_and_records_no_failure_itself(instrument, monkeypatch):
    """If a future upstream release records failed attempts itself, this fails: take it out of VERIFIED_UPSTREAM."""
    from opentelemetry.instrumentation.httpx.version import __version__

    assert __version__ in attempt_metrics.VERIFIED_UPSTREAM
    inst = instrument(breaker_threshold=100, retry_attempts=1)
    monkeypatch.setattr(inst.layer.failed_attempts, "record", lambda *args: None)  # ours off
    with pytest.raises(httpx.ConnectError):
        call("sync", f"http://127.0.0.1:{closed_port()}/")
    assert duration_points(inst) == []  # the upstream alone recorded nothing


def test_an_unverified_upstream_gets_no_failure_recorded(instrument, monkeypatch):
    monkeypatch.setattr(attempt_metrics, "VERIFIED_UPSTREAM", frozenset())
    inst = instrument(breaker_threshold=100, retry_attempts=1)
    with pytest.raises(httpx.ConnectError):
        call("sync", f"http://127.0.0.1:{closed_port()}/")
    assert duration_points(inst) == []


@pytest.mark.slow
def test_through_the_launcher_refused_and_timed_out_attempts_reach_the_receiver(tmp_path: Path, fault_server):
    """The issue's case: 8 ConnectError attempts gave 0 points; 5 ReadTimeouts gave no series at all."""
    script = textwrap.dedent(
        """
        import sys, httpx
        refused, slow = sys.argv[1], sys.argv[2]
        for url, timeout in ((refused, 5.0), (slow, httpx.Timeout(5.0, read=0.1))):
            try:
                httpx.get(url, timeout=timeout)
            except httpx.HTTPError as error:
                print(type(error).__name__)
        """
    )
    path = tmp_path / "app.py"
    path.write_text(script)
    port = closed_port()
    with OTLPReceiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(
            OTEL_SERVICE_NAME="failing", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_METRIC_EXPORT_INTERVAL="200", OTEL_INTEGRATION_BREAKER_THRESHOLD="100",
        )
        launcher = str(Path(sys.executable).parent / "opentelemetry-instrument")
        done = subprocess.run(
            [launcher, sys.executable, str(path), f"http://127.0.0.1:{port}/", f"{fault_server.url}/slow?delay=1"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0 and done.stdout.split() == ["ConnectError", "ReadTimeout"], done.stderr

        def counts(rx: OTLPReceiver) -> dict[str, int]:
            found: dict[str, int] = {}
            for p in rx.metrics():
                if p.name == DURATION and p.attributes.get("error.type"):
                    found[p.attributes["error.type"]] = max(found.get(p.attributes["error.type"], 0), p.count or 0)
            return found

        assert receiver.wait_for(lambda rx: counts(rx) == {"ConnectError": 3, "ReadTimeout": 3}), json.dumps(counts(receiver))
