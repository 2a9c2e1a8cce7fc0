"""End to end: the examples/pipeline services under `opentelemetry-instrument`.

One run of the pipeline (module fixture): dms, extract and catalog as real uvicorn
processes exporting OTLP/HTTP to an embedded `OTLPReceiver`, driven through the demo's
phases (healthy, extract flaky, extract down, extract back). The tests then read what
arrived at the receiver, the HTTP answers and each service's log file.

The demo script itself runs once to completion and once interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "examples" / "pipeline"
sys.path.insert(0, str(PIPELINE))

from orchestrate import Pipeline, Result, pids_alive, request_ids, trace_for  # noqa: E402

pytestmark = pytest.mark.slow

CIRCUIT_OPEN = "CircuitOpenError"
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class Run:
    def __init__(self, pipe: Pipeline, results: list[Result], pids: list[int], pgids: list[int]):
        self.pipe = pipe
        self.results = results
        self.pids = pids
        self.pgids = pgids
        assert pipe.receiver is not None
        self.spans = pipe.receiver.spans()
        self.metrics = pipe.receiver.metrics()

    def result(self, request_id: str) -> Result:
        return next(r for r in self.results if r.request_id == request_id)

    def by_phase(self, phase: str) -> list[Result]:
        return [r for r in self.results if r.phase == phase]

    def trace(self, result: Result) -> list[Any]:
        assert result.request_id, f"no request ID for {result}"
        spans = trace_for(self.spans, result.request_id)
        assert spans, f"no trace received for {result.request_id}"
        return spans

    def log(self, service: str) -> str:
        return self.pipe.services[service].log_text()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("pipeline")
    # Long enough that the down phase's calls all meet an open breaker on a busy machine;
    # the recovered phase polls for half-open instead of sleeping.
    pipe = Pipeline(workdir, breaker_open_seconds=6)
    try:
        with pipe:
            pids = [s.pid for s in pipe.services.values()]
            pgids = [os.getpgid(pid) for pid in pids]
            results = pipe.run_phases()
        pipe.wait_for_telemetry()
        yield Run(pipe, results, pids, pgids)
    finally:
        pipe.stop()
        pipe.close_receiver()


def _server_of(spans: list[Any], span: Any) -> Any:
    """The nearest SERVER ancestor of `span` in its own service (INTERNAL spans in between,
    e.g. a framework's own span, are allowed)."""
    by_id = {s.span_id: s for s in spans}
    current = by_id.get(span.parent_span_id)
    while current is not None and current.kind != "SERVER":
        assert current.service_name == span.service_name, (current.name, span.name)
        current = by_id.get(current.parent_span_id)
    assert current is not None, f"{span.service_name} {span.name}: no SERVER ancestor received"
    assert current.service_name == span.service_name
    return current


def _calls_made_by(spans: list[Any], server: Any) -> list[Any]:
    """CLIENT spans (attempts) made while handling `server`, in start order."""
    return sorted((s for s in spans if s.kind == "CLIENT" and s.service_name == server.service_name
                   and _server_of(spans, s).span_id == server.span_id), key=lambda s: s.start_ns)


def _server_child(spans: list[Any], client: Any, service: str, path: str) -> Any:
    """The SERVER span that `client` (an attempt) caused: its direct child over W3C traceparent."""
    servers = [s for s in spans if s.parent_span_id == client.span_id and s.kind == "SERVER"]
    assert len(servers) == 1, f"{client.attributes.get('url.full')} -> {[s.name for s in servers]}"
    (server,) = servers
    assert server.service_name == service
    assert server.attributes.get("url.path") == path
    assert server.trace_id == client.trace_id
    return server


def _path(span: Any) -> str:
    return "/" + span.attributes["url.full"].split("/", 3)[3]


# --------------------------------------------------------------------------- traces


def test_one_trace_spans_dms_extract_catalog_with_parent_links(run: Run) -> None:
    healthy = run.result(f"healthy-1-{run.pipe.run_id}")
    assert healthy.status == 201, healthy.body
    spans = run.trace(healthy)
    assert {s.service_name for s in spans} == {"dms", "extract", "catalog"}
    assert len({s.trace_id for s in spans}) == 1

    (root,) = [s for s in spans if not s.parent_span_id]
    assert (root.service_name, root.kind, root.attributes.get("url.path")) == \
        ("dms", "SERVER", "/documents")
    # One SERVER span per request handled: dms 1, extract 3 (ocr, extract, schema), catalog 2.
    servers = sorted(s.service_name for s in spans if s.kind == "SERVER")
    assert servers == ["catalog"] * 2 + ["dms"] + ["extract"] * 3, servers

    # dms calls extract twice (ocr, extract) and catalog once, in that order.
    calls = _calls_made_by(spans, root)
    assert [(c.attributes.get("peer.service"), _path(c)) for c in calls] == \
        [("extract", "/ocr"), ("extract", "/extract"), ("catalog", "/register")]
    assert all(c.status_code != "ERROR" for c in calls)
    assert all("http.request.resend_count" not in c.attributes for c in calls)

    ocr, extract, register = calls
    _server_child(spans, ocr, "extract", "/ocr")
    extract_server = _server_child(spans, extract, "extract", "/extract")
    # extract -> catalog (bulk registration, async client)
    (bulk,) = _calls_made_by(spans, extract_server)
    assert bulk.attributes.get("peer.service") == "catalog"
    _server_child(spans, bulk, "catalog", "/register/bulk")
    # catalog -> extract (schema analysis, sync client in a threadpool endpoint)
    register_server = _server_child(spans, register, "catalog", "/register")
    (schema,) = _calls_made_by(spans, register_server)
    assert schema.attributes.get("peer.service") == "extract"
    _server_child(spans, schema, "extract", f"/schema/{healthy.body['doc_id']}")


def test_server_spans_keep_the_route(run: Run) -> None:
    """Low-cardinality SERVER span names: the FastAPI route, not the raw path."""
    spans = run.trace(run.result(f"healthy-1-{run.pipe.run_id}"))
    routes = {s.attributes.get("http.route") for s in spans if s.kind == "SERVER"}
    assert routes == {"/documents", "/ocr", "/extract", "/register/bulk", "/register",
                      "/schema/{doc_id}"}, routes
    assert "GET /schema/{doc_id}" in {s.name for s in spans if s.kind == "SERVER"}


# --------------------------------------------------------------------------- X-Request-ID


def _reached_extract(result: Result) -> bool:
    return result.body.get("reason") != "CircuitOpenError"


def test_same_request_id_on_every_span_of_the_trace(run: Run) -> None:
    # (The request sent without an ID is checked in test_every_response_echoes_the_request_id.)
    for result in [r for r in run.results if r.sent_request_id]:
        spans = run.trace(result)
        hops = [s for s in spans if s.kind in ("SERVER", "CLIENT")]
        assert hops
        for span in hops:
            assert request_ids(span) == {result.request_id}, (span.service_name, span.name,
                                                              span.attributes)
        clients = [s for s in hops if s.kind == "CLIENT"]
        assert all(s.attributes["http.request.header.x-request-id"] == (result.request_id,)
                   for s in clients)
        servers = {s.service_name for s in hops if s.kind == "SERVER"}
        expected = {"dms", "extract", "catalog"} if result.status == 201 else \
            {"dms", "extract"} if _reached_extract(result) else {"dms"}
        assert servers == expected, result.request_id


def test_every_response_echoes_the_request_id(run: Run) -> None:
    for result in run.results:
        if result.sent_request_id:
            assert result.response_request_id == result.sent_request_id, result
        else:  # dms made one up: valid, answered, and the one every hop carried
            assert result.response_request_id and VALID_ID.fullmatch(result.response_request_id)
            spans = run.trace(result)
            assert all(request_ids(s) == {result.response_request_id}
                       for s in spans if s.kind in ("SERVER", "CLIENT"))


def test_request_id_in_every_services_logs(run: Run) -> None:
    logs = {name: run.log(name) for name in ("dms", "extract", "catalog")}
    for result in run.results:
        rid = result.request_id
        assert rid, result
        expected = ["dms"]
        if _reached_extract(result):
            expected.append("extract")
        if result.status == 201:
            expected.append("catalog")
        for service in expected:
            lines = [line for line in logs[service].splitlines() if rid in line]
            assert lines, f"{rid} not in {service}'s log:\n{logs[service][-2000:]}"
        # one access line per request, carrying the ID, in dms
        assert any("POST /documents ->" in line for line in logs["dms"].splitlines()
                   if rid in line)


# --------------------------------------------------------------------------- retries


def test_retries_are_attempt_spans_with_resend_count(run: Run) -> None:
    flaky = run.result(f"flaky-1-{run.pipe.run_id}")
    assert flaky.status == 201, flaky.body
    spans = run.trace(flaky)
    (root,) = [s for s in spans if not s.parent_span_id]
    ocr_attempts = [s for s in _calls_made_by(spans, root) if _path(s) == "/ocr"]
    # Bursts of two 503s: attempts 0 and 1 fail, the resend #2 succeeds.
    assert [s.attributes.get("http.request.resend_count", 0) for s in ocr_attempts] == [0, 1, 2]
    assert [s.attributes.get("http.response.status_code") for s in ocr_attempts] == [503, 503, 200]
    assert [s.status_code == "ERROR" for s in ocr_attempts] == [True, True, False]
    # Each attempt really reached extract: one server span under each.
    for attempt in ocr_attempts:
        server = _server_child(spans, attempt, "extract", "/ocr")
        assert server.attributes.get("http.response.status_code") == \
            attempt.attributes["http.response.status_code"]
    # The sync client in catalog retried too.
    schema_attempts = [s for s in spans if s.kind == "CLIENT" and s.service_name == "catalog"
                       and "/schema/" in s.attributes.get("url.full", "")]
    assert sorted(s.attributes.get("http.request.resend_count", 0) for s in schema_attempts) \
        == [0, 1, 2]


def _counter(run: Run, name: str, service: str, **attributes: Any) -> float:
    """Latest value of a cumulative counter, summed over the series that match.
    Attribute keyword names use "__" for "." (circuit_breaker__state)."""
    latest: dict[tuple, Any] = {}
    for p in run.metrics:
        if p.name != name or p.service_name != service:
            continue
        wanted = {k.replace("__", ".").replace("peer_service", "peer.service"): v
                  for k, v in attributes.items()}
        if any(p.attributes.get(k) != v for k, v in wanted.items()):
            continue
        key = tuple(sorted((k, str(v)) for k, v in p.attributes.items()))
        if key not in latest or p.time_ns >= latest[key].time_ns:
            latest[key] = p
    return sum(p.value or 0 for p in latest.values())


def test_retry_metrics_per_downstream(run: Run) -> None:
    assert _counter(run, "http.client.retries", "dms", peer_service="extract") >= 8
    assert _counter(run, "http.client.retries", "catalog", peer_service="extract") >= 4
    assert _counter(run, "http.client.retries", "dms", peer_service="catalog") == 0
    assert _counter(run, "http.client.retry_budget.exhausted", "dms") == 0


# --------------------------------------------------------------------------- breaker


def test_breaker_opens_dms_fails_fast_naming_extract_and_recovers(run: Run) -> None:
    down = run.by_phase("down")
    assert all(r.status == 503 for r in down), [r.body for r in down]
    assert all(r.body["downstream"] == "extract" for r in down)
    reasons = [r.body["reason"] for r in down]
    # First calls exhaust their retries on 503s; once the breaker opens, calls fail fast.
    # The structured error (issue 14): a 503 after every retry is the seed's ServiceUnavailableError.
    assert reasons[0] == "UnavailableStatusError"
    assert "from extract for POST" in down[0].body["detail"] and "3 attempts" in down[0].body["detail"]
    assert reasons[-1] == "CircuitOpenError", reasons
    fast = [r for r in down if r.body["reason"] == "CircuitOpenError"]
    for result in fast:
        assert "circuit breaker for extract is open" in result.body["detail"]
        spans = run.trace(result)
        # No network I/O: no extract span at all, one CLIENT span carrying the error.
        assert {s.service_name for s in spans} == {"dms"}
        (client,) = [s for s in spans if s.kind == "CLIENT"]
        assert client.attributes["error.type"] == CIRCUIT_OPEN
        assert client.attributes.get("peer.service") == "extract"
        assert client.status_code == "ERROR"
        (root,) = [s for s in spans if not s.parent_span_id]
        assert _server_of(spans, client).span_id == root.span_id
        assert root.attributes.get("http.response.status_code") == 503

    recovered = run.by_phase("recovered")
    assert [r.status for r in recovered] == [201] * len(recovered), [r.body for r in recovered]

    transitions = {state: _counter(run, "http.client.circuit_breaker.transitions", "dms",
                                   peer_service="extract", circuit_breaker__state=state)
                   for state in ("open", "half_open", "closed")}
    assert transitions == {"open": 1, "half_open": 1, "closed": 1}, transitions
    assert _counter(run, "http.client.circuit_breaker.rejections", "dms",
                    peer_service="extract") == len(fast)


# --------------------------------------------------------------------------- processes


def _group_members(pgids: list[int]) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            members.append(int(stat.parent.name))
    return members


# --------------------------------------------------------------------------- validation


def test_catalog_validates_extracts_schema_and_names_each_field(run: Run) -> None:
    (drift,) = run.by_phase("drift")
    assert drift.status == 201, drift.body  # registered without the schema, as catalog decided
    log = run.log("catalog")
    line = next(line for line in log.splitlines() if "schema analysis of" in line and "rejected" in line)
    assert f"request_id={drift.request_id}" in line or drift.request_id in line
    assert "response of extract to GET /schema/" in line and "does not match SchemaAnalysis (2 fields)" in line
    assert "schema.fields: expected Input should be a valid list, got string" in line
    assert "schema.fingerprint: expected Input should be a valid string, got number" in line
    # Telemetry: the counter by downstream, the event on catalog's span of the request.
    assert _counter(run, "http.client.response.validation_errors", "catalog", peer_service="extract") == 1
    events = [
        attrs for s in run.trace(drift) if s.service_name == "catalog" for name, attrs in s.events
        if name == "http.client.response.validation_error"
    ]
    assert len(events) == 1 and events[0]["validation.field_count"] == 2
    assert list(events[0]["validation.fields"]) == ["schema.fields", "schema.fingerprint"]
    healthy = [r for r in run.by_phase("healthy") if r.request_id]
    assert all(r.status == 201 for r in healthy)


def test_no_service_process_left(run: Run) -> None:
    assert len(set(run.pids)) == 3
    assert pids_alive(run.pids) == []
    if Path("/proc/self/stat").exists():
        assert _group_members(run.pgids) == []


def _demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "PYTEST_"))}
    return {**env, "NO_COLOR": "1"}


def test_demo_script_runs_to_completion(tmp_path: Path) -> None:
    # A long open window: on a busy machine the down phase's calls must all meet the open breaker.
    proc = subprocess.run(
        [sys.executable, str(PIPELINE / "demo.py"), "--workdir", str(tmp_path), "--open-seconds", "6"],
        env=_demo_env(), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for marker in ("phase 1/5: healthy", "phase 4/5: recovered", "phase 5/5: drift", "retry #2",
                   CIRCUIT_OPEN, "->open x1, ->half_open x1, ->closed x1",
                   "http://localhost:16686", "no service process left running"):
        assert marker in out, marker
    pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
    assert len(pids) == 3 and pids_alive(pids) == []


def test_demo_ctrl_c_stops_every_service(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(PIPELINE / "demo.py"), "--workdir", str(tmp_path)],
        env={**_demo_env(), "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Like a terminal's Ctrl-C: a run started in the background (`cmd &` in a script)
        # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    output = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "phase 1/5" in line:
                break
        pids = [int(p) for p in re.findall(r"pid (\d+)", "".join(output))]
        assert len(pids) == 3, "".join(output)
        assert pids_alive(pids) == pids
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            # Seen once in a full run (not reproduced in 26 tries): say where it waits.
            proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's traceback
            rest, _ = proc.communicate(timeout=20)
            pytest.fail("the demo did not stop within 20 s of Ctrl-C:\n" + "".join(output) + rest[-8000:])
        assert proc.returncode == 130, "".join(output) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert pids_alive(pids) == []
