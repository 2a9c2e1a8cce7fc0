"""WSGI middleware with the behaviour of the ASGI one (`asgi.py`).

Under ``opentelemetry-instrument`` the server instrumentor wraps
``Flask.wsgi_app``; other WSGI apps use it by hand::

    flask_app.wsgi_app = RequestIdWSGIMiddleware(flask_app.wsgi_app)
    application = RequestIdWSGIMiddleware(application)
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from typing import Any

from opentelemetry import context as otel_context

from otel_integration._server import health
from otel_integration._propagation import new_request_id, valid_request_id
from otel_integration._server.correlation import INTERNAL_ERROR_BODY, SCOPE_KEY, Correlator, current_request
from otel_integration._settings import Settings

_logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class RequestIdWSGIMiddleware:
    """WSGI middleware with the same behaviour as `RequestIdMiddleware`.

    An exception escaping the app before it started a response is logged
    (with the request ID) and answered with a 500 carrying the ID: a WSGI
    server would otherwise send its own 500 without it.
    """

    def __init__(self, app: WSGIApp, settings: Settings | None = None, *, serve_health: bool = True) -> None:
        self.app = app
        self._core = Correlator(settings)
        self._serve_health = serve_health

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return handle(self._core, environ, start_response, self.app, self._serve_health)


def handle(
    core: Correlator, environ: dict[str, Any], start_response: StartResponse, app: WSGIApp, serve_health: bool
) -> Iterable[bytes]:
    if SCOPE_KEY in environ:
        return app(environ, start_response)
    request_id = None
    for name in core.incoming_environ:
        value = environ.get(name)
        if value is not None:
            # PEP 3333: header values are latin-1 decoded str; several are joined with ", ".
            request_id = valid_request_id(value.encode("latin-1", "replace"))
            if request_id is not None:
                break
    if request_id is None:
        request_id = new_request_id()
    environ[SCOPE_KEY] = request_id
    environ[core.header_environ] = request_id  # the app sees the validated value only
    authorization = environ.get("HTTP_AUTHORIZATION") if core.forward_auth else None
    ctx, state = core.context(request_id, authorization)
    started = False
    echo = (core.header, request_id)
    header_lower = core.header_lower

    def start_with_id(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        nonlocal started
        started = True
        for name, _ in headers:
            if name.lower() == header_lower:
                break  # the app set it: kept, never duplicated
        else:
            headers = [*headers, echo]
        return start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)

    token = otel_context.attach(ctx)
    state_token = current_request.set(state)
    try:
        if serve_health and core.health_path and environ.get("PATH_INFO") == core.health_path:
            return health.wsgi_endpoint(environ, start_with_id)
        try:
            result = app(environ, start_with_id)
        except Exception:
            if started:
                raise
            _logger.exception("Unhandled exception in WSGI application")
            start_with_id(
                "500 Internal Server Error",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(INTERNAL_ERROR_BODY)))],
            )
            return [INTERNAL_ERROR_BODY]
        if isinstance(result, (list, tuple)) or _is_file_wrapper(environ, result):
            # No app code runs while these are iterated, and the server must see a
            # file wrapper as such to send it with sendfile (PEP 3333).
            return result
        # Taken while the request's context is current: the body is iterated in it.
        return _InContext(result, contextvars.copy_context())
    finally:
        current_request.reset(state_token)
        otel_context.detach(token)


def _is_file_wrapper(environ: dict[str, Any], result: object) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(result, wrapper)


class _InContext:
    """A streamed body, iterated and closed with the request's context current
    (generators may log or call out).

    Each chunk is produced by ``context.run(next, iterator)``: the whole context
    (OpenTelemetry's and ours) is switched in C, with no Python-level attach and
    detach per chunk, and the server iterates the C ``map`` object directly.
    """

    __slots__ = ("_result", "_context")

    def __init__(self, result: Iterable[bytes], context: contextvars.Context) -> None:
        self._result = result
        self._context = context

    def __iter__(self) -> Iterator[bytes]:
        return map(self._context.run, repeat(next), repeat(iter(self._result)))

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            self._context.run(close)
