"""Structured errors (issue 14, part 1): the seed's types, each also the httpx class it replaces.

Through both transports against real servers on 127.0.0.1 (a closed port, a
slow endpoint, 401/500/503 answers), in-process and under the real
`opentelemetry-instrument` launcher.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import pickle
import textwrap
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from otel_integration import errors
from otel_integration._client.structured import CALL_INFO
from otel_integration.errors import (
    AuthenticationError,
    CircuitOpenError,
    HTTPStatusError,
    IntegrationError,
    IntegrationTimeoutError,
    ServiceUnavailableError,
    UnavailableStatusError,
    ValidationError,
    error_type,
)
from tests.peers import FaultServer, QuickFaultServer, closed_port
from tests.test_launcher_e2e import receiver, run_script  # noqa: F401 - the receiver fixture

TWINS = {
    httpx.ConnectError: ServiceUnavailableError,
    httpx.ReadError: ServiceUnavailableError,
    httpx.WriteError: ServiceUnavailableError,
    httpx.CloseError: ServiceUnavailableError,
    httpx.RemoteProtocolError: ServiceUnavailableError,
    httpx.ProxyError: ServiceUnavailableError,
    httpx.ConnectTimeout: IntegrationTimeoutError,
    httpx.ReadTimeout: IntegrationTimeoutError,
    httpx.WriteTimeout: IntegrationTimeoutError,
    httpx.PoolTimeout: IntegrationTimeoutError,
    httpx.LocalProtocolError: IntegrationError,
    httpx.UnsupportedProtocol: IntegrationError,
}


@pytest.mark.parametrize("httpx_class", list(TWINS), ids=lambda c: c.__name__)
def test_every_twin_is_the_httpx_class_and_the_seed_category(httpx_class):
    twin = errors.twin_of(httpx_class)
    assert twin is not None and issubclass(twin, httpx_class) and issubclass(twin, TWINS[httpx_class])
    assert error_type(twin) == error_type(httpx_class)  # error.type reads the same, converted or not
    assert not issubclass(twin, (builtins.TimeoutError, OSError))  # existing `except OSError` blocks unchanged


@pytest.mark.parametrize(
    ("status", "category"),
    [(401, AuthenticationError), (403, AuthenticationError), (429, UnavailableStatusError),
     (502, UnavailableStatusError), (503, UnavailableStatusError), (504, UnavailableStatusError),
     (500, HTTPStatusError), (404, HTTPStatusError), (302, HTTPStatusError)],
)
def test_status_classes(status, category):
    assert errors.status_error_class(status) is category
    assert issubclass(category, httpx.HTTPStatusError) and issubclass(category, IntegrationError)
    assert issubclass(UnavailableStatusError, ServiceUnavailableError)
    assert not issubclass(errors.status_error_class(500), ServiceUnavailableError)


def test_validation_error_is_a_value_error():
    assert issubclass(ValidationError, IntegrationError) and issubclass(ValidationError, ValueError)


def call(kind: str, url: str, **kwargs: Any) -> httpx.Response:
    """One GET through an instrumented client of `kind`; raise_for_status() on the response."""
    if kind == "sync":
        with httpx.Client() as client:
            return client.get(url, **kwargs).raise_for_status()

    async def main() -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return (await client.get(url, **kwargs)).raise_for_status()

    return asyncio.run(main())


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_connect_refused_is_service_unavailable_and_httpx_connect_error(instrument, kind):
    instrumented = instrument(retry_attempts=3)
    port = closed_port()
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("caller") as span:
        with pytest.raises(httpx.ConnectError) as caught:
            call(kind, f"http://127.0.0.1:{port}/documents?api_key=s3cr3t")
    error = caught.value
    assert isinstance(error, ServiceUnavailableError) and isinstance(error, httpx.TransportError)
    assert type(error) is errors.ConnectError
    assert error.downstream == f"127.0.0.1:{port}" and error.attempts == 3 and error.status is None
    assert error.trace_id == format(span.get_span_context().trace_id, "032x")
    assert error.request_id and error.request.headers["x-request-id"] == error.request_id
    assert f"127.0.0.1:{port}, 3 attempts, request_id {error.request_id}" in str(error)
    assert "s3cr3t" not in str(error)
    assert type(error.__cause__) is httpx.ConnectError  # the original, one "direct cause" away
    # error.type on the attempt spans is httpx's name, as before
    assert {s.attributes.get("error.type") for s in instrumented.attempt_spans(port)} == {"ConnectError"}


def test_read_timeout_is_integration_timeout_not_the_builtin(instrument, kind):
    instrument(retry_attempts=2)
    with QuickFaultServer() as server:
        with pytest.raises(httpx.ReadTimeout) as caught:
            call(kind, server.url + "/slow?delay=2", timeout=0.2)
    error = caught.value
    assert isinstance(error, IntegrationTimeoutError) and isinstance(error, httpx.TimeoutException)
    assert not isinstance(error, builtins.TimeoutError)
    assert error.attempts == 2 and error.downstream == f"127.0.0.1:{server.port}"


def test_the_last_status_is_kept_when_a_retry_then_fails_to_connect(instrument):
    instrument(retry_attempts=2)
    answers = iter([httpx.Response(503), httpx.ConnectError("refused")])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(errors.ConnectError) as caught:
            client.get("http://svc.test/")
    assert caught.value.status == 503 and caught.value.attempts == 2
    assert "last status 503" in str(caught.value)


def test_a_logical_name_names_the_downstream(instrument, kind):
    port = closed_port()
    instrument(retry_attempts=1, services={"extract": f"127.0.0.1:{port}"})
    with pytest.raises(ServiceUnavailableError) as caught:
        call(kind, f"http://127.0.0.1:{port}/")
    assert caught.value.downstream == "extract" and str(caught.value).endswith(
        f"(extract, 1 attempt, request_id {caught.value.request_id})"
    )


@pytest.mark.parametrize(
    ("status", "category", "attempts"),
    [(401, AuthenticationError, 1), (403, AuthenticationError, 1), (503, UnavailableStatusError, 3),
     (429, UnavailableStatusError, 3), (500, HTTPStatusError, 1), (404, HTTPStatusError, 1)],
)
def test_raise_for_status_raises_the_structured_subclass(instrument, kind, status, category, attempts):
    instrument(retry_attempts=3)
    with QuickFaultServer() as server:
        with pytest.raises(httpx.HTTPStatusError) as caught:
            call(kind, f"{server.url}/status/{status}?access_token=s3cr3t&page=2")
    error = caught.value
    assert type(error) is category
    assert isinstance(error, IntegrationError)
    assert error.response.status_code == status and error.status == status
    assert error.request.url.path == f"/status/{status}"
    assert error.attempts == attempts and error.downstream == f"127.0.0.1:{server.port}"
    assert error.request_id == error.request.headers["x-request-id"]
    text = str(error)
    assert f"'{status} " in text and f"from 127.0.0.1:{server.port} for GET" in text
    assert "s3cr3t" not in text and "page=2" in text
    assert error.__cause__ is None and error.__suppress_context__  # httpx's message holds the raw URL


def test_a_success_passes_and_carries_the_call_info(instrument, kind):
    instrument()
    with QuickFaultServer() as server:
        response = call(kind, server.url + "/ok")
    info = response.extensions[CALL_INFO]
    assert info["downstream"] == f"127.0.0.1:{server.port}" and info["attempts"] == 1
    assert info["request_id"] == response.request.headers["x-request-id"]


def test_a_response_that_did_not_pass_the_layer_is_named_by_host_and_port(instrument):
    instrument()
    response = httpx.Response(503, request=httpx.Request("GET", "https://svc.test/x?token=abc"))
    with pytest.raises(UnavailableStatusError) as caught:
        response.raise_for_status()
    assert caught.value.downstream == "svc.test:443" and caught.value.attempts is None
    assert "abc" not in str(caught.value)


def test_switched_off_callers_get_httpx_own_errors(instrument, kind):
    instrument(retry_attempts=1, structured_errors=False)
    with pytest.raises(httpx.ConnectError) as caught:
        call(kind, f"http://127.0.0.1:{closed_port()}/")
    assert type(caught.value) is httpx.ConnectError
    with QuickFaultServer() as server:
        with pytest.raises(httpx.HTTPStatusError) as status:
            call(kind, server.url + "/status/503")
    assert type(status.value) is httpx.HTTPStatusError


def test_uninstrument_restores_raise_for_status(instrument):
    original = httpx.Response.raise_for_status
    instrument()
    assert httpx.Response.raise_for_status is not original
    from otel_integration import OtelIntegrationInstrumentor

    OtelIntegrationInstrumentor().uninstrument()
    assert httpx.Response.raise_for_status is original


def test_refused_calls_carry_the_request_id(instrument, clock):
    instrumented = instrument(clock=clock, retry_attempts=1, breaker_threshold=1)
    port = closed_port()
    with pytest.raises(httpx.ConnectError):
        call("sync", f"http://127.0.0.1:{port}/")
    with pytest.raises(CircuitOpenError) as caught:
        call("sync", f"http://127.0.0.1:{port}/")
    error = caught.value
    assert isinstance(error, ServiceUnavailableError) and error.attempts == 0
    assert error.request_id == error.request.headers["x-request-id"]
    assert instrumented.breaker(port).state() == "open"


def _made(cls: type[IntegrationError]) -> IntegrationError:
    request = httpx.Request("GET", "http://extract:8081/x", headers={"Authorization": "Bearer s3cr3t"})
    fields = {"downstream": "extract", "attempts": 3, "request_id": "rid-1", "trace_id": "ab" * 16, "status": 503}
    if issubclass(cls, httpx.HTTPStatusError):
        return cls("boom", request=request, response=httpx.Response(503, request=request), **fields)
    return cls("boom", request=request, **fields)


@pytest.mark.parametrize(
    "cls",
    [errors.twin_of(c) for c in TWINS] + [AuthenticationError, UnavailableStatusError, HTTPStatusError,
                                        ServiceUnavailableError, IntegrationTimeoutError, ValidationError],
    ids=lambda c: c.__name__,
)
def test_every_error_pickles_without_its_request(cls):
    error = _made(cls)
    data = pickle.dumps(error)
    assert b"s3cr3t" not in data
    copy = pickle.loads(data)
    assert type(copy) is cls and str(copy) == str(error)
    assert (copy.downstream, copy.attempts, copy.request_id, copy.trace_id, copy.status) == (
        "extract", 3, "rid-1", "ab" * 16, 503
    )
    with pytest.raises(RuntimeError):
        copy.request  # noqa: B018 - httpx's own "not set" error


def test_under_the_launcher(tmp_path, receiver):  # noqa: F811
    """As users run it: no code change, the types come from the distro."""
    script = textwrap.dedent(
        """
        import json, sys
        import httpx
        from otel_integration.errors import ServiceUnavailableError, UnavailableStatusError

        url = sys.argv[1]
        out = {}
        try:
            httpx.get("http://127.0.0.1:%s/" % CLOSED)
        except httpx.ConnectError as error:
            out["connect"] = [type(error).__name__, isinstance(error, ServiceUnavailableError), error.attempts, str(error)]
        try:
            httpx.get(url + "/status/503").raise_for_status()
        except httpx.HTTPStatusError as error:
            out["status"] = [type(error).__name__, isinstance(error, UnavailableStatusError), error.attempts, error.downstream]
        print(json.dumps(out))
        """
    ).replace("CLOSED", str(closed_port()))
    with FaultServer() as server:
        done = run_script(tmp_path, server, receiver, {"OTEL_INTEGRATION_RETRY_ATTEMPTS": "2",
                                                       "OTEL_INTEGRATION_RETRY_INITIAL_WAIT": "0.01",
                                                       "OTEL_INTEGRATION_RETRY_JITTER": "0"}, script=script)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["connect"][:3] == ["ConnectError", True, 2] and "2 attempts" in out["connect"][3]
    assert out["status"] == ["UnavailableStatusError", True, 2, f"127.0.0.1:{server.port}"]


# --- a process pool: the case (a worker raising one broke the pool) ------------------------------


def _worker_pid() -> int:
    import os

    return os.getpid()


def _raise_in_worker(case: str, port: int, probe_url: str) -> None:
    """In a pool worker: a real call through the sync transport that fails with the error of `case`."""
    from dataclasses import replace

    from otel_integration import ResilientTransport
    from otel_integration._client.layer import ResilienceLayer
    from otel_integration._settings import Settings

    key = f"127.0.0.1:{port}"
    fast = {"retry_initial_wait": 0.01, "retry_max_wait": 0.05, "retry_jitter": 0.0}
    if case == "connect":
        settings = replace(Settings(), **fast, retry_attempts=2, breaker_threshold=1000)
    elif case == "circuit_open":
        settings = replace(Settings(), **fast, retry_attempts=1, breaker_threshold=1, breaker_open_seconds=600)
    else:
        settings = replace(Settings(), **fast, health_probes={key: probe_url}, health_probe_ttl=600)
    layer = ResilienceLayer(settings, tracer_provider=TracerProvider())
    try:
        if case == "unhealthy":
            assert layer.downstreams.probes[key].status(wait=60) is False  # the probe's first result: failing
        with httpx.Client(transport=ResilientTransport(httpx.HTTPTransport(), layer)) as client:
            url = f"http://{key}/"
            if case == "circuit_open":
                try:
                    client.get(url)  # refused: opens the breaker
                except httpx.ConnectError:
                    pass
            client.get(url, headers={"X-Request-ID": f"rid-{case}"})
    finally:
        layer.close()


@pytest.mark.parametrize(
    ("case", "cls", "attempts"),
    [("connect", errors.ConnectError, 2), ("circuit_open", CircuitOpenError, 0),
     ("unhealthy", errors.DownstreamUnhealthyError, 0)],
    ids=["ConnectError", "CircuitOpenError", "DownstreamUnhealthyError"],
)
def test_an_error_raised_in_a_process_pool_worker_reaches_the_parent_and_the_pool_lives_on(case, cls, attempts):
    import concurrent.futures
    import multiprocessing

    port = closed_port()
    # spawn: the worker is a fresh interpreter, so the error really crosses the process boundary by pickle.
    context = multiprocessing.get_context("spawn")
    with QuickFaultServer() as probe_target, concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        pid = pool.submit(_worker_pid).result(timeout=120)
        future = pool.submit(_raise_in_worker, case, port, probe_target.url + "/status/503")
        with pytest.raises(cls) as raised:
            future.result(timeout=120)
        error = raised.value
        assert type(error) is cls
        assert (error.downstream, error.attempts, error.request_id) == (f"127.0.0.1:{port}", attempts, f"rid-{case}")
        if case == "circuit_open":
            assert isinstance(error.retry_at, float)
        with pytest.raises(RuntimeError):
            error.request  # noqa: B018 - the request stayed in the worker (httpx's own "not set" error)
        # The pool is not broken: the same worker answers the next task.
        assert pool.submit(_worker_pid).result(timeout=120) == pid
        assert pool.submit(_worker_pid).result(timeout=120) == pid
