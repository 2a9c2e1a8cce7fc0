"""End to end: a plain httpx script under `opentelemetry-instrument`, cached with one variable.

The script imports nothing of ours; ``OTEL_INTEGRATION_CACHE=memory`` is the
only opt-in (the breaker threshold is lowered so that one failed call opens
it). It calls a real downstream (the fault server in a process of its own),
which the test then kills: the breaker opens and the stored responses answer,
as the receiver's spans and counter show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otel_integration.devtools.receiver import OTLPReceiver

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
OUTCOME = "http.client.cache.outcome"
ROOT = Path(__file__).resolve().parent.parent
DOWNSTREAM = "from tests.peers import FaultServer; import sys; s = FaultServer().__enter__(); print(s.url, flush=True); sys.stdin.read()"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import httpx

    url = sys.argv[1]
    page = url + "/cache/page?cc=max-age%3D60"  # fresh for a minute
    report = url + "/cache/report"  # no cache headers: stored for stale-if-error only
    with httpx.Client() as client:
        first, second = client.get(page).json(), client.get(page).json()
        print(json.dumps({"first": first, "second": second, "report": client.get(report).json()}), flush=True)
        sys.stdin.readline()  # the test stops the downstream
        answers = []
        for _ in range(2):
            response = client.get(report)
            answers.append({
                "status": response.status_code, "body": response.json(), "age": response.headers.get("age"),
                "cache": response.extensions.get("otel_integration.cache"),
            })
        page_now = client.get(page).extensions.get("otel_integration.cache")
        print(json.dumps({"stale": answers, "page": page_now}), flush=True)
    """
)


@pytest.fixture
def receiver():
    with OTLPReceiver() as receiver:
        yield receiver


def test_a_script_under_the_launcher_gets_hits_then_stale_answers_when_the_downstream_is_down(tmp_path, receiver):
    (tmp_path / "app.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    env.update(
        OTEL_SERVICE_NAME="cached-app",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="200",
        OTEL_INTEGRATION_CACHE="memory",
        OTEL_INTEGRATION_BREAKER_THRESHOLD="1",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    downstream = subprocess.Popen(
        [sys.executable, "-c", DOWNSTREAM], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert downstream.stdout is not None
    url = downstream.stdout.readline().strip()
    process = subprocess.Popen(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "app.py", url],
        env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        before = json.loads(process.stdout.readline() or "null")
        assert before == {
            "first": {"key": "page", "served": 1}, "second": {"key": "page", "served": 1},
            "report": {"key": "report", "served": 1},
        }, process.stderr.read() if process.stderr else ""  # the second page a hit: served once
    finally:
        downstream.kill()  # the downstream goes down, its connections with it
        downstream.wait()
    process.stdin.write("go\n")
    process.stdin.flush()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    after = json.loads(out)
    connect, refused = after["stale"]
    assert connect["status"] == refused["status"] == 200
    assert connect["body"] == refused["body"] == {"key": "report", "served": 1}
    assert connect["cache"]["outcome"] == refused["cache"]["outcome"] == "stale"
    # The pooled connection is gone: the first call fails on it or on connecting (either opens the breaker).
    assert connect["cache"]["error"] in ("ConnectError", "RemoteProtocolError", "ReadError")
    assert refused["cache"]["error"] == "CircuitOpenError"
    assert refused["age"] is not None and int(refused["age"]) == refused["cache"]["age"]
    assert after["page"] == {"outcome": "hit"}  # still fresh: answered with the breaker open

    def spans(outcome: str) -> list:
        return [s for s in receiver.spans() if s.kind == "CLIENT" and s.attributes.get(OUTCOME) == outcome]

    assert receiver.wait_for(lambda r: len(spans("stale")) == 2 and len(spans("hit")) == 2), [
        (s.name, s.attributes) for s in receiver.spans()
    ]
    assert sorted(s.attributes["http.client.cache.stale_if_error"] for s in spans("stale")) == sorted([
        "CircuitOpenError", connect["cache"]["error"],
    ])
    assert all(s.attributes.get("http.response.header.age") for s in spans("stale"))

    def counted() -> dict[str, float]:
        latest: dict[str, float] = {}
        for point in receiver.metrics():
            if point.name == "http.client.cache.requests":
                latest[point.attributes[OUTCOME]] = float(point.value or 0)  # cumulative: the last is the total
        return latest

    assert receiver.wait_for(lambda r: counted() == {"miss": 2, "hit": 2, "stale": 2}), counted()
