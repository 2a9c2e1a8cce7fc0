"""End to end: a plain httpx script under `opentelemetry-instrument`.

Real peers only: the script runs as a subprocess under the real launcher,
calls a real HTTP server on 127.0.0.1, and exports over OTLP/HTTP to a real
receiver that decodes the official protobuf messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from otel_integration.devtools.receiver import OTLPReceiver
from tests.peers import FaultServer

BIN = Path(sys.executable).parent
LAUNCHER = str(BIN / "opentelemetry-instrument")

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import httpx

    url = sys.argv[1]
    out = {}
    with httpx.Client() as client:
        out["sync"] = client.get(url + "/ok").status_code
    async def main():
        async with httpx.AsyncClient() as client:
            return (await client.get(url + "/ok")).status_code
    out["async"] = asyncio.run(main())
    from opentelemetry import propagate
    out["propagators"] = sorted(type(p).__name__ for p in propagate.get_global_textmap()._propagators)
    print(json.dumps(out))
    """
)


def run_script(
    tmp_path: Path, server: FaultServer, receiver: OTLPReceiver, extra_env: dict[str, str] | None = None,
    script: str = SCRIPT, pythonpath: str | None = None,
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "app.py"
    path.write_text(script)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))
    }
    env.update(
        OTEL_SERVICE_NAME="e2e-app",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="200",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env.update(extra_env or {})
    return subprocess.run(
        [LAUNCHER, sys.executable, str(path), server.url],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def receiver():
    with OTLPReceiver() as receiver:
        yield receiver


def _client_spans(receiver: OTLPReceiver) -> list:
    return [s for s in receiver.spans() if s.kind == "CLIENT" and s.scope_name.endswith("httpx")]


def test_plain_httpx_script_gets_trace_context_request_id_and_otlp_export(tmp_path, fault_server, receiver):
    result = run_script(tmp_path, fault_server, receiver)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["sync"] == out["async"] == 200
    assert out["propagators"] == ["RequestIdPropagator", "W3CBaggagePropagator", "W3CTraceContextPropagator"]

    seen = fault_server.requests_to("/ok")
    assert len(seen) == 2
    for request in seen:
        assert "traceparent" in request.headers
        assert uuid.UUID(request.headers["x-request-id"]).version == 4  # a fresh one

    assert receiver.wait_for(lambda r: len(_client_spans(r)) >= 2), receiver.spans()
    spans = _client_spans(receiver)
    by_span_id = {s.span_id: s for s in spans}
    for request in seen:
        _version, trace_id, span_id, _flags = request.headers["traceparent"].split("-")
        span = by_span_id[span_id]
        assert span.trace_id == trace_id
        assert span.name == "GET"
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == fault_server.port
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["http.request.header.x-request-id"] == (request.headers["x-request-id"],)
        assert "http.method" not in span.attributes  # old semconv is off
        assert span.resource["service.name"] == "e2e-app"

    assert receiver.wait_for(
        lambda r: any(p.name == "http.client.request.duration" for p in r.metrics()), timeout=15
    ), [p.name for p in receiver.metrics()]
    point = next(p for p in receiver.metrics() if p.name == "http.client.request.duration")
    assert point.unit == "s"
    assert point.attributes["server.address"] == "127.0.0.1"
    # Exemplars: the latency panel's dots that open a trace (docs/observability.md) start here.
    # The SDK's default filter (trace_based) keeps measurements made in a sampled span.
    exemplars = [e for p in receiver.metrics() if p.name == "http.client.request.duration" for e in p.exemplars]
    assert exemplars and {(e.trace_id, e.span_id) for e in exemplars} <= {(s.trace_id, s.span_id) for s in spans}


def test_retries_are_attempt_spans_with_resend_count_and_one_request_id(tmp_path, fault_server, receiver):
    script = textwrap.dedent(
        """
        import sys, httpx
        print(httpx.get(sys.argv[1] + "/flaky/k?fail=2").status_code)
        """
    )
    result = run_script(
        tmp_path, fault_server, receiver, script=script,
        extra_env={"OTEL_INTEGRATION_RETRY_INITIAL_WAIT": "0.01", "OTEL_INTEGRATION_RETRY_JITTER": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "200"
    seen = fault_server.requests_to("/flaky/k")
    assert len(seen) == 3
    assert len({r.headers["x-request-id"] for r in seen}) == 1
    assert len({r.headers["traceparent"] for r in seen}) == 3  # one span per attempt

    assert receiver.wait_for(lambda r: len(_client_spans(r)) >= 3)
    spans = sorted(_client_spans(receiver), key=lambda s: s.start_ns)
    assert [s.attributes.get("http.request.resend_count") for s in spans] == [None, 1, 2]
    assert [s.attributes["http.response.status_code"] for s in spans] == [503, 503, 200]
    assert receiver.wait_for(
        lambda r: any(p.name == "http.client.retries" and p.value == 2 for p in r.metrics()), timeout=15
    ), [(p.name, p.value) for p in receiver.metrics()]


def test_user_set_propagators_are_respected(tmp_path, fault_server, receiver):
    result = run_script(tmp_path, fault_server, receiver, extra_env={"OTEL_PROPAGATORS": "tracecontext"})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # Only what was asked for; "tracecontext" is the distro's conformant subclass of the SDK's.
    assert out["propagators"] == ["W3CTraceContextPropagator"]
    # The retry transport still fixes one correlation ID per call.
    assert all("x-request-id" in r.headers for r in fault_server.requests_to("/ok"))


def test_bad_configuration_logs_one_error_and_the_app_runs(tmp_path, fault_server, receiver):
    result = run_script(tmp_path, fault_server, receiver, extra_env={"OTEL_INTEGRATION_RETRY_ATTEMPTS": "many"})
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if "OTEL_INTEGRATION_RETRY_ATTEMPTS" in line]
    assert len(errors) == 1, result.stderr
    assert "'many'" in errors[0] and "expected an integer from 1 to 100" in errors[0] and "default 3" in errors[0]


def test_dead_collector_never_breaks_the_app(tmp_path, fault_server):
    from tests.peers import closed_port

    class DeadReceiver:
        endpoint = f"http://127.0.0.1:{closed_port()}"

    result = run_script(tmp_path, fault_server, DeadReceiver())  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["sync"] == 200


def test_programmatic_configure_twice_does_not_duplicate_spans(tmp_path, fault_server, receiver):
    script = textwrap.dedent(
        """
        import sys, httpx, otel_integration
        otel_integration.configure()
        otel_integration.configure()
        httpx.get(sys.argv[1] + "/ok")
        from opentelemetry import trace
        trace.get_tracer_provider().force_flush()
        """
    )
    path = tmp_path / "prog.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_SERVICE_NAME="prog", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_METRICS_EXPORTER="none")
    result = subprocess.run([sys.executable, str(path), fault_server.url], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert receiver.wait_for(lambda r: len(_client_spans(r)) >= 1)
    assert len(_client_spans(receiver)) == 1
    request = fault_server.requests_to("/ok")[0]
    assert "x-request-id" in request.headers and "traceparent" in request.headers


@pytest.fixture(scope="module")
def official_distro(tmp_path_factory) -> str:
    """The official opentelemetry-distro, installed beside ours (PYTHONPATH)."""
    target = tmp_path_factory.mktemp("official-distro")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         "opentelemetry-distro>=0.66b0,<0.67"],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"could not install opentelemetry-distro: {result.stderr[-500:]}")
        pytest.skip("opentelemetry-distro cannot be installed here")
    return str(target)


def test_with_official_distro_found_first_a_clear_warning_names_the_variables(
    tmp_path, fault_server, receiver, official_distro
):
    result = run_script(tmp_path, fault_server, receiver, pythonpath=official_distro)
    assert result.returncode == 0, result.stderr
    assert "OTEL_PYTHON_DISTRO=otel_integration" in result.stderr
    assert "OTEL_PYTHON_CONFIGURATOR=otel_integration" in result.stderr


def test_with_official_distro_and_the_variables_set_ours_is_in_force(tmp_path, fault_server, receiver, official_distro):
    result = run_script(
        tmp_path, fault_server, receiver, pythonpath=official_distro,
        extra_env={"OTEL_PYTHON_DISTRO": "otel_integration", "OTEL_PYTHON_CONFIGURATOR": "otel_integration"},
    )
    assert result.returncode == 0, result.stderr
    assert "another OpenTelemetry distro" not in result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "RequestIdPropagator" in out["propagators"]
    assert receiver.wait_for(lambda r: len(_client_spans(r)) >= 2)
    assert all("x-request-id" in r.headers for r in fault_server.requests_to("/ok"))


# --- issue 11: no setting that `check` accepts, and no bad standard one, switches instrumentation off ---------


@pytest.mark.parametrize(
    "extra_env",
    [
        {"OTEL_INTEGRATION_BREAKER_OPEN_SECONDS": "86400", "OTEL_INTEGRATION_RETRY_MAX_WAIT": "3600",
         "OTEL_INTEGRATION_RETRY_JITTER": "3600", "OTEL_INTEGRATION_RETRY_INITIAL_WAIT": "3600"},
        {"OTEL_INTEGRATION_BREAKER_STORAGE": "redis://127.0.0.1:1/0"},  # accepted, unreachable
        {"OTEL_INTEGRATION_BREAKER_OPEN_SECONDS": "0", "OTEL_INTEGRATION_BREAKER_STORAGE": "redis://h:port/0"},  # rejected
    ],
    ids=["largest-accepted", "unreachable-redis", "rejected-values"],
)
def test_instrumentation_stays_on_whatever_the_settings(tmp_path, fault_server, receiver, extra_env):
    result = run_script(tmp_path, fault_server, receiver, extra_env=extra_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["sync"] == 200
    assert "Failed to auto initialize" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert receiver.wait_for(lambda r: len(_client_spans(r)) >= 2), result.stderr
    assert all("x-request-id" in r.headers for r in fault_server.requests_to("/ok"))  # our layer is on too


def test_an_unknown_otlp_protocol_is_replaced_with_one_error_and_everything_runs(tmp_path, fault_server, receiver):
    """The issue's case: OTEL_EXPORTER_OTLP_PROTOCOL=thrift passed check, then no instrumentation ran at all."""
    result = run_script(tmp_path, fault_server, receiver, extra_env={"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"})
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if "OTEL_EXPORTER_OTLP_PROTOCOL" in line]
    assert len(errors) == 1 and "using http/protobuf" in errors[0], result.stderr
    assert receiver.wait_for(lambda r: len(_client_spans(r)) >= 2), result.stderr


def test_master_switch_off_means_no_request_id_anywhere(tmp_path, fault_server, receiver):
    """The issue's case: OTEL_INTEGRATION_ENABLED=false still injected X-Request-ID."""
    result = run_script(tmp_path, fault_server, receiver, extra_env={"OTEL_INTEGRATION_ENABLED": "false"})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert "RequestIdPropagator" not in out["propagators"]
    seen = fault_server.requests_to("/ok")
    assert len(seen) == 2 and all("traceparent" in r.headers and "x-request-id" not in r.headers for r in seen)


def test_master_switch_off_with_xrequestid_named_explicitly(tmp_path, fault_server, receiver):
    result = run_script(
        tmp_path, fault_server, receiver,
        extra_env={"OTEL_INTEGRATION_ENABLED": "false", "OTEL_PROPAGATORS": "tracecontext,xrequestid"},
    )
    assert result.returncode == 0, result.stderr
    assert all("x-request-id" not in r.headers for r in fault_server.requests_to("/ok"))


def test_configure_never_crashes_the_app(tmp_path, fault_server, receiver):
    script = textwrap.dedent(
        """
        import sys, httpx, otel_integration
        otel_integration.configure()
        print(httpx.get(sys.argv[1] + "/ok").status_code)
        """
    )
    path = tmp_path / "app.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="thrift",
        OTEL_TRACES_EXPORTER="nope", OTEL_INTEGRATION_BREAKER_OPEN_SECONDS="0", OTEL_BSP_SCHEDULE_DELAY="100",
    )
    result = subprocess.run([sys.executable, str(path), fault_server.url], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "200", result.stderr
    assert "Traceback" not in result.stderr, result.stderr
