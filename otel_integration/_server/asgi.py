"""ASGI middleware: the request's correlation ID in, in context, on the span, out on every response.

Under ``opentelemetry-instrument`` nothing needs changing: the server
instrumentor (`instrumentor.py`) puts it outside every Starlette/FastAPI
middleware (so unhandled 500s carry the ID too) and around plain ASGI apps
under uvicorn. Without the launcher::

    app.add_middleware(RequestIdMiddleware)   # Starlette / FastAPI
    app = RequestIdMiddleware(app)            # any ASGI app

Applying it twice (launcher and by hand, or a mounted sub-app) is harmless:
the outermost instance does the work, inner ones pass the request through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context

from otel_integration._server import health, shield
from otel_integration._server.correlation import INTERNAL_ERROR_BODY, SCOPE_KEY, Correlator, current_request
from otel_integration._settings import Settings


class RequestIdMiddleware:
    """ASGI middleware: correlation ID in, in context, on the span, out on every response."""

    def __init__(self, app: Any, settings: Settings | None = None, *, serve_health: bool = True) -> None:
        self.app = app
        self._core = Correlator(settings)
        self._serve_health = serve_health

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        await handle(self._core, scope, receive, send, self.app, self._serve_health)


async def handle(core: Correlator, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any], app: Any, serve_health: bool) -> None:
    if scope.get("type") not in ("http", "websocket") or SCOPE_KEY in scope:
        await app(scope, receive, send)
        return
    shield.ensure()
    headers = scope.get("headers") or ()

    def lookup(name: str) -> list[Any]:
        wanted = name.encode("latin-1")
        return [v for k, v in headers if k.lower() == wanted]

    request_id = core.request_id(lookup)
    scope[SCOPE_KEY] = request_id
    # What the app (and the upstream middleware's propagator) sees from now on:
    # exactly one request-ID header, with the validated or generated value.
    scope["headers"] = [(core.header_bytes, request_id.encode("latin-1"))] + [
        (k, v) for k, v in headers if k.lower() != core.header_bytes
    ]
    authorization = None
    if core.settings.auth_forward_to:
        found = lookup("authorization")
        authorization = found[0] if len(found) == 1 else None  # ambiguous: forward nothing
    ctx, state = core.context(request_id, authorization)
    header_value = request_id.encode("latin-1")
    started = False

    async def send_with_id(message: dict[str, Any]) -> None:
        nonlocal started
        kind = message.get("type")
        if kind in ("http.response.start", "websocket.accept"):
            started = True
            message_headers = list(message.get("headers") or ())
            if not any(k.lower() == core.header_bytes for k, _ in message_headers):
                message_headers.append((core.header_bytes, header_value))
                message = {**message, "headers": message_headers}
            state.stamp()
        await send(message)

    token = otel_context.attach(ctx)
    state_token = current_request.set(state)
    try:
        if serve_health and scope["type"] == "http" and _is_health_request(core.settings, scope):
            await health.asgi_endpoint(scope, receive, send_with_id)
            return
        try:
            await app(scope, receive, send_with_id)
        except Exception as error:
            if not started and scope["type"] == "http":
                await _send_internal_error(send_with_id)
            # The server logs the traceback after the request's context is gone: a note
            # (printed with the traceback, Python 3.11+) keeps the request ID in it.
            if hasattr(error, "add_note"):
                error.add_note(f"request_id={request_id}")
            raise
        finally:
            state.stamp()
    finally:
        current_request.reset(state_token)
        otel_context.detach(token)


def _is_health_request(settings: Settings, scope: dict[str, Any]) -> bool:
    return bool(settings.health_path) and scope.get("path") == settings.health_path and scope.get("method") in ("GET", "HEAD")


async def _send_internal_error(send: Callable[..., Any]) -> None:
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(INTERNAL_ERROR_BODY)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": INTERNAL_ERROR_BODY})
    except Exception:  # noqa: BLE001 - the client went away; the original error matters
        pass
