"""Nothing of one WSGI request is reachable from the next one on the same thread.

The issue's bug (pre-v2): the ``_pending_request`` context variable was never
reset, so after a call its 10 MB body and ``Authorization`` header stayed
reachable from the caller's context, and across WSGI requests (a WSGI
server's thread runs one request after another in the same context).

Request 1 carries an incoming ``Authorization`` (forwarded by the layer to the
allowlisted downstream, which a health probe gates) and makes an outgoing call with a 10 MB body and an
``Authorization`` header of its own; request 2, on the same thread, finds
after ``gc.collect()`` that request 1's outgoing request, its body stream, its
headers and its response are gone (weak references), that the context holds
no httpx request and no secret, that the distro's context variables
(`current_attempt`, the request ID, the incoming Authorization, the current
request) are request 2's own or empty, and that its own call does not carry
request 1's Authorization.

Two apps (Flask under the `ServerInstrumentor` patch, plain WSGI under
`RequestIdWSGIMiddleware`), each with a streamed body (the middleware keeps
the request's context for it until the server closes it), and two drivers: a
real wsgiref server on 127.0.0.1 (one thread, requests in turn) and a direct
WSGI call loop on the test's thread, which also checks the context between
the requests. WSGI is sync only: there is no async twin (an ASGI request runs
in a task of its own, with a context of its own).
"""

from __future__ import annotations

import contextvars
import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from io import BytesIO
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import setup_testing_defaults

import httpx
import pytest

from otel_integration import RequestIdWSGIMiddleware, ServerInstrumentor, get_request_id
from otel_integration._auth import get_incoming_authorization
from otel_integration._client.tracing import current_attempt
from otel_integration._server.correlation import current_request
from otel_integration._settings import Settings
from tests.peers import QuickFaultServer

BODY_SIZE = 10 * 1024 * 1024
INCOMING_SECRET = "Bearer incoming-secret-1"
OUTGOING_SECRET = "Bearer outgoing-secret-1"


class Leaks:
    """The app's handlers and what they saw; `handle(path)` is the body of each request."""

    def __init__(self, downstream: str) -> None:
        self.downstream = downstream
        self.first: dict[str, weakref.ref[Any]] = {}
        self.second: dict[str, Any] = {}
        self.threads: list[int] = []

    def handle(self, path: str) -> bytes:
        self.threads.append(threading.get_ident())
        if path == "/first":
            return self._first()
        if path == "/second":
            return self._second()
        return b"?"

    def _first(self) -> bytes:
        request = httpx.Request(
            "POST", f"{self.downstream}/ok", content=b"b" * BODY_SIZE, headers={"Authorization": OUTGOING_SECRET}
        )
        with httpx.Client() as client:
            # The incoming Authorization, forwarded to the allowlisted downstream.
            assert client.get(f"{self.downstream}/forwarded-1").status_code == 200
            response = client.send(request)  # the last call of the request: the one a context would keep
            response.read()
            assert response.status_code == 200
        self.first = {
            "request": weakref.ref(request),
            "body stream": weakref.ref(request.stream),
            "headers": weakref.ref(request.headers),
            "response": weakref.ref(response),
        }
        return b"first"

    def _second(self) -> bytes:
        gc.collect()
        context = contextvars.copy_context()
        self.second = {
            "alive": sorted(name for name, ref in self.first.items() if ref() is not None),
            "attempt": current_attempt.get(),
            "request_id": get_request_id(),
            "authorization": get_incoming_authorization(),
            "request state id": getattr(current_request.get(), "request_id", None),
            "httpx requests in context": [v for v in context.values() if isinstance(v, httpx.Request)],
            "secrets in context": [
                s for s in ("incoming-secret-1", "outgoing-secret-1") if s in repr(list(context.items()))
            ],
        }
        with httpx.Client() as client:
            assert client.get(f"{self.downstream}/forwarded-2").status_code == 200
        return b"second"


# --- the two apps ------------------------------------------------------------------------------------------------


def flask_app(leaks: Leaks) -> Callable[..., Any]:
    import flask

    app = flask.Flask("leaks")

    @app.route("/<name>", methods=["GET", "POST"])
    def view(name: str) -> Any:
        body = leaks.handle("/" + name)
        return flask.Response(iter([body]))  # streamed: the middleware keeps the context for it

    return app  # its wsgi_app is wrapped by the ServerInstrumentor


def plain_app(leaks: Leaks, settings: Settings) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        body = leaks.handle(environ["PATH_INFO"])  # in the request's context, as a Flask view runs
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return iter([body])  # streamed: the middleware keeps the context for it

    return RequestIdWSGIMiddleware(app, settings)


# --- the two drivers ----------------------------------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def over_wsgiref(app: Callable[..., Any], requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, str]]:
    """A real wsgiref server on 127.0.0.1: one thread serves the requests one after another."""
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        answers = []
        with httpx.Client(transport=httpx.HTTPTransport()) as client:
            for path, headers in requests:
                response = client.get(url + path, headers=headers)
                answers.append((response.status_code, response.headers.get("x-request-id", "")))
        return answers
    finally:
        server.shutdown()
        server.server_close()


def in_this_thread(app: Callable[..., Any], requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, str]]:
    """The WSGI calls a server makes, on the test's thread; between requests the context is empty again."""
    answers = []
    for path, headers in requests:
        environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": BytesIO()}
        setup_testing_defaults(environ)
        environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
        started: list[Any] = []
        result = app(environ, lambda status, response_headers, exc_info=None: started.append((status, response_headers)))
        try:
            b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        del result
        status, response_headers = started[0]
        answers.append((int(status.split()[0]), dict(response_headers).get("X-Request-ID", "")))
        assert current_attempt.get() is None
        assert get_request_id() is None and get_incoming_authorization() is None and current_request.get() is None
    return answers


# --- the test --------------------------------------------------------------------------------------------------


@pytest.fixture
def probe_target() -> Iterator[QuickFaultServer]:
    with QuickFaultServer() as server:
        yield server


@pytest.fixture
def settings(fault_server: Any, probe_target: QuickFaultServer) -> Settings:
    # Auth forwarding on, and a health probe gating the downstream (the pre-v2 gate found the
    # request in the context variable that leaked it).
    return replace(
        Settings(), auth_forward_to=("127.0.0.1",),
        health_probes={f"127.0.0.1:{fault_server.port}": f"{probe_target.url}/ok"},
    )


@pytest.fixture
def server_instrumented(settings: Settings) -> Iterator[None]:
    instrumentor = ServerInstrumentor()
    instrumentor.instrument(settings=settings)
    yield
    instrumentor.uninstrument()


@pytest.mark.parametrize("driver", [over_wsgiref, in_this_thread], ids=["wsgiref", "direct"])
@pytest.mark.parametrize("kind", ["flask", "plain"])
def test_nothing_of_a_wsgi_request_is_reachable_from_the_next(
    kind, driver, instrument, fault_server, probe_target, settings, server_instrumented
):
    instrument(auth_forward_to=settings.auth_forward_to, health_probes=settings.health_probes)
    leaks = Leaks(fault_server.url)
    app = flask_app(leaks) if kind == "flask" else plain_app(leaks, settings)
    answers = driver(
        app,
        [("/first", {"X-Request-ID": "req-1", "Authorization": INCOMING_SECRET}), ("/second", {"X-Request-ID": "req-2"})],
    )
    assert answers == [(200, "req-1"), (200, "req-2")]
    assert len(leaks.first) == 4 and len(set(leaks.threads)) == 1  # both requests on one thread

    # Request 1's call went through the layer (its request ID, its own Authorization, the forwarded one).
    (sent,) = fault_server.requests_to("/ok")
    assert sent.headers["x-request-id"] == "req-1" and sent.headers["authorization"] == OUTGOING_SECRET
    assert fault_server.requests_to("/forwarded-1")[0].headers.get("authorization") == INCOMING_SECRET
    assert probe_target.requests_to("/ok")  # the probe ran: its gate admitted the calls

    assert leaks.second == {
        "alive": [],
        "attempt": None,
        "request_id": "req-2",
        "authorization": None,
        "request state id": "req-2",
        "httpx requests in context": [],
        "secrets in context": [],
    }
    (second_call,) = fault_server.requests_to("/forwarded-2")
    assert "authorization" not in second_call.headers and second_call.headers["x-request-id"] == "req-2"
