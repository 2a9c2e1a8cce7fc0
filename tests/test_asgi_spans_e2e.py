"""End to end: how many spans one request makes, in services run as users run them.

Starlette, FastAPI and plain ASGI apps served by uvicorn under
``opentelemetry-instrument``, exporting to the project's OTLP receiver. By default
a request makes exactly one span, the SERVER one: the upstream ASGI middleware's
``http send`` / ``http receive`` INTERNAL spans are off.
``OTEL_INTEGRATION_ASGI_INTERNAL_SPANS=receive,send`` brings them back; a bad value
is reported (variable, value, expectation) and the default holds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from otel_integration.devtools.receiver import OTLPReceiver
from tests.launched import LaunchedService, free_port, service_env, uvicorn_argv
from tests.peers import wait_until

pytestmark = pytest.mark.slow

APPS = {"starlette": "starlette_app", "fastapi": "fastapi_app", "plain": "plain_app"}
ALL_SPANS = {"OTEL_INTEGRATION_ASGI_INTERNAL_SPANS": "receive,send"}
BAD_VALUE = {"OTEL_INTEGRATION_ASGI_INTERNAL_SPANS": "all"}
# name -> (app, extra environment)
SERVICES: dict[str, tuple[str, dict[str, str]]] = {
    **{f"{app}-default": (app, {}) for app in APPS},
    **{f"{app}-all-spans": (app, ALL_SPANS) for app in ("starlette", "fastapi")},
    "starlette-bad-value": ("starlette", BAD_VALUE),
}


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, LaunchedService], OTLPReceiver]]:
    logdir = tmp_path_factory.mktemp("asgi-spans")
    receiver = OTLPReceiver().start()
    launched: dict[str, LaunchedService] = {}
    try:
        for name, (app, extra) in SERVICES.items():
            port = free_port()
            argv = uvicorn_argv(f"tests.apps.spans:{APPS[app]}", port, "--no-access-log")
            launched[name] = LaunchedService(name, argv, port, service_env(receiver.endpoint, name, **extra), logdir)
        deadline = time.monotonic() + 90  # generous: six launchers starting at once on a busy machine
        for service in launched.values():
            service.wait_ready(deadline)
        yield launched, receiver
    finally:
        for service in launched.values():
            service.stop()
        receiver.stop()


def spans_of_one_request(services: Any, name: str, method: str = "GET", path: str = "/") -> list[Any]:
    """Every span of the trace of one request to `name`, once its SERVER span has arrived.

    The INTERNAL spans end before the SERVER span does, and the SDK exports spans
    in the order they end: once the SERVER span is in, every span of the request is.
    """
    launched, receiver = services
    request_id = f"spans-{uuid.uuid4().hex}"
    response = httpx.request(method, launched[name].url + path, content=b"body" if method == "POST" else None,
                             headers={"X-Request-ID": request_id}, timeout=30)
    assert response.status_code == 200 and response.headers["x-request-id"] == request_id

    def server_span() -> Any:
        return next((s for s in receiver.spans() if s.kind == "SERVER"
                     and list(s.attributes.get("http.request.header.x-request-id", ())) == [request_id]), None)

    wait_until(lambda: server_span() is not None, what=f"the SERVER span of {name}")
    trace_id = server_span().trace_id
    return [s for s in receiver.spans() if s.trace_id == trace_id]


@pytest.mark.parametrize("app", list(APPS))
@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("POST", "/echo")])
def test_one_request_makes_exactly_one_span_by_default(services: Any, app: str, method: str, path: str) -> None:
    spans = spans_of_one_request(services, f"{app}-default", method, path)
    assert [s.kind for s in spans] == ["SERVER"], [(s.kind, s.name) for s in spans]


@pytest.mark.parametrize("app", ["starlette", "fastapi"])
def test_the_variable_brings_the_receive_and_send_spans_back(services: Any, app: str) -> None:
    spans = spans_of_one_request(services, f"{app}-all-spans", "POST", "/echo")
    internal = sorted(s.name.rsplit(" ", 1)[-1] for s in spans if s.kind == "INTERNAL")
    (server,) = [s for s in spans if s.kind == "SERVER"]
    # The body is read once (one receive); the response start and its body are two sends.
    assert internal == ["receive", "send", "send"], [(s.kind, s.name) for s in spans]
    assert all(s.parent_span_id == server.span_id for s in spans if s.kind == "INTERNAL")


@pytest.mark.parametrize("app", ["starlette", "fastapi"])
def test_the_server_span_is_the_same_either_way(services: Any, app: str) -> None:
    (default,) = spans_of_one_request(services, f"{app}-default", "POST", "/echo")
    (server,) = [s for s in spans_of_one_request(services, f"{app}-all-spans", "POST", "/echo") if s.kind == "SERVER"]
    assert (default.name, default.status_code) == (server.name, server.status_code)
    assert set(default.attributes) == set(server.attributes)
    assert default.attributes["http.response.status_code"] == server.attributes["http.response.status_code"] == 200


def test_a_bad_value_is_reported_and_the_default_holds(services: Any) -> None:
    launched, _receiver = services
    spans = spans_of_one_request(services, "starlette-bad-value")
    assert [s.kind for s in spans] == ["SERVER"]
    message = ("OTEL_INTEGRATION_ASGI_INTERNAL_SPANS='all' is invalid: expected receive, send or receive,send "
               "(or none); using the default (empty)")
    wait_until(lambda: message in launched["starlette-bad-value"].log(), what="the settings error in the log")
