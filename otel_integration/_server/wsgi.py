"""WSGI middleware with the behaviour of the ASGI one (`asgi.py`).

Under ``opentelemetry-instrument`` the server instrumentor wraps
``Flask.wsgi_app``; other WSGI apps use it by hand::

    flask_app.wsgi_app = RequestIdWSGIMiddleware(flask_app.wsgi_app)
    application = RequestIdWSGIMiddleware(application)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from otel_integration._server import health
from otel_integration._server.correlation import (
    INTERNAL_ERROR_BODY,
    SCOPE_KEY,
    Correlator,
    RequestState,
    current_request,
)
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


def _environ_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def handle(
    core: Correlator, environ: dict[str, Any], start_response: StartResponse, app: WSGIApp, serve_health: bool
) -> Iterable[bytes]:
    if SCOPE_KEY in environ:
        return app(environ, start_response)

    def lookup(name: str) -> list[Any]:
        value = environ.get(_environ_name(name))
        if value is None:
            return []
        # PEP 3333: header values are latin-1 decoded str; several are joined with ", ".
        return [value.encode("latin-1", "replace")]

    request_id = core.request_id(lookup)
    environ[SCOPE_KEY] = request_id
    environ[_environ_name(core.header)] = request_id  # the app sees the validated value only
    authorization = environ.get("HTTP_AUTHORIZATION") if core.settings.auth_forward_to else None
    ctx, state = core.context(request_id, authorization)
    started = False

    def start_with_id(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        nonlocal started
        started = True
        if not any(name.lower() == core.header_lower for name, _ in headers):
            headers = [*headers, (core.header, request_id)]
        state.stamp()
        return start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)

    token = otel_context.attach(ctx)
    state_token = current_request.set(state)
    try:
        if serve_health and core.settings.health_path and environ.get("PATH_INFO") == core.settings.health_path:
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
    finally:
        current_request.reset(state_token)
        otel_context.detach(token)
    if isinstance(result, (list, tuple)) or _is_file_wrapper(environ, result):
        # No app code runs while these are iterated, and the server must see a
        # file wrapper as such to send it with sendfile (PEP 3333).
        return result
    return _iterate_in_context(result, ctx, state)


def _is_file_wrapper(environ: dict[str, Any], result: object) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(result, wrapper)


def _iterate_in_context(result: Iterable[bytes], ctx: Context, state: RequestState) -> Iterator[bytes]:
    """Stream the body with the request's context current (generators may log or call out)."""
    iterator = iter(result)
    try:
        while True:
            token, state_token = otel_context.attach(ctx), current_request.set(state)
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            finally:
                current_request.reset(state_token)
                otel_context.detach(token)
            yield chunk
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            token = otel_context.attach(ctx)
            try:
                close()
            finally:
                otel_context.detach(token)
