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
from otel_integration._propagation import first_valid_request_id, new_request_id
from otel_integration._server.correlation import INTERNAL_ERROR_BODY, SCOPE_KEY, Correlator, current_request
from otel_integration._settings import Settings


class RequestIdMiddleware:
    """ASGI middleware: correlation ID in, in context, on the span, out on every response."""

    def __init__(self, app: Any, settings: Settings | None = None, *, serve_health: bool = True) -> None:
        self.app = app
        self._core = Correlator(settings)
        self._serve_health = serve_health
        shield.install_when_loaded()  # the instrumentor does this too; here for use without it

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        await handle(self._core, scope, receive, send, self.app, self._serve_health)


_STARTS = ("http.response.start", "websocket.accept")


async def handle(core: Correlator, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any], app: Any, serve_health: bool) -> None:
    kind = scope.get("type")
    if (kind != "http" and kind != "websocket") or SCOPE_KEY in scope:
        await app(scope, receive, send)
        return
    headers = scope.get("headers") or ()
    # One pass over the headers, for the few names of interest (the per-request cost is here).
    wanted = core.wanted
    found: dict[bytes, list[Any]] | None = None
    for name, value in headers:
        name = name.lower()
        if name in wanted:
            if found is None:
                found = {}
            found.setdefault(name, []).append(value)
    request_id = None
    header_bytes = core.header_bytes
    authorization = None
    if found is not None:
        for incoming in core.incoming_bytes:
            request_id = first_valid_request_id(found.get(incoming, ()))
            if request_id is not None:
                break
        auth_values = found.get(b"authorization")
        if auth_values is not None and core.forward_auth:
            authorization = auth_values[0] if len(auth_values) == 1 else None  # ambiguous: forward nothing
    if request_id is None:
        request_id = new_request_id()
    scope[SCOPE_KEY] = request_id
    echo = (header_bytes, request_id.encode("latin-1"))
    # What the app (and the upstream middleware) sees from now on: exactly one
    # request-ID header, with the validated or generated value.
    if found is not None and header_bytes in found:
        scope["headers"] = [echo, *[item for item in headers if item[0].lower() != header_bytes]]
    else:
        scope["headers"] = [echo, *headers]
    ctx, state = core.context(request_id, authorization)
    started = False

    async def send_with_id(message: dict[str, Any]) -> None:
        nonlocal started
        if message["type"] in _STARTS:
            started = True
            message_headers = message.get("headers") or ()
            for name, _ in message_headers:
                if name.lower() == header_bytes:
                    break  # the app set it: kept, never duplicated
            else:
                message["headers"] = [*message_headers, echo]  # the message is the app's, made for this send
        await send(message)

    token = otel_context.attach(ctx)
    state_token = current_request.set(state)
    try:
        if serve_health and core.health_path and kind == "http" and _is_health_request(core.health_path, scope):
            await health.asgi_endpoint(scope, receive, send_with_id)
            return
        try:
            await app(scope, receive, send_with_id)
        except Exception as error:
            if not started and kind == "http":
                await _send_internal_error(send_with_id)
            # The server logs the traceback after the request's context is gone: a note
            # (printed with the traceback, Python 3.11+) keeps the request ID in it.
            if hasattr(error, "add_note"):
                error.add_note(f"request_id={request_id}")
            raise
    finally:
        current_request.reset(state_token)
        otel_context.detach(token)


def _is_health_request(path: str, scope: dict[str, Any]) -> bool:
    return scope.get("path") == path and scope.get("method") in ("GET", "HEAD")


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
