"""Request IDs through a service: ASGI and WSGI middleware, and the launcher hook.

For every HTTP request a service handles:

1. The correlation ID is the first *valid* value (`valid_request_id`) among
   the incoming headers ``OTEL_INTEGRATION_REQUEST_ID_INCOMING_HEADERS``
   (X-Request-ID, X-Correlation-ID, X-Trace-ID), else a fresh UUID4. A bad
   value (CR/LF, 10 KB, non-ASCII) is treated as absent: it is never echoed,
   logged, recorded or forwarded.
2. It is made current in the OpenTelemetry context (`set_request_id`) for
   the whole request, so every httpx call made while handling it (sync,
   async, in threads started by the framework, in asyncio tasks and in
   Starlette background tasks) carries it, and every log record gets it.
3. It is echoed on every response under ``OTEL_INTEGRATION_REQUEST_ID_HEADER``,
   error responses and unhandled 500s included, unless the app set that
   header itself.
4. It is recorded on the SERVER span as ``http.request.header.x-request-id``
   (a string array, as the HTTP semantic conventions say).

Under ``opentelemetry-instrument`` nothing needs changing: the
``otel_integration_server`` instrumentor wraps ``Starlette.__call__`` (so the
middleware is outside every Starlette/FastAPI middleware, ServerErrorMiddleware
included), uvicorn's app loading (plain ASGI apps; a SERVER span is added with
the upstream ASGI middleware when nothing else creates one) and
``Flask.wsgi_app``. Without the launcher::

    app.add_middleware(RequestIdMiddleware)                  # Starlette / FastAPI
    app = RequestIdMiddleware(app)                           # any ASGI app
    flask_app.wsgi_app = RequestIdWSGIMiddleware(flask_app.wsgi_app)

Applying it twice (launcher and by hand, or a mounted sub-app) is harmless:
the outermost instance does the work, inner ones pass the request through.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.sdk.trace import Span
from opentelemetry.trace import SpanKind

from otel_integration import auth
from otel_integration.propagation import first_valid_request_id, get_request_id, new_request_id, set_request_id
from otel_integration.settings import Settings
from otel_integration.tracing import StartOnlySpanProcessor

_logger = logging.getLogger(__name__)

# Set in the ASGI scope / WSGI environ by the instance that handles the request.
SCOPE_KEY = "otel_integration.request_id"

_INTERNAL_ERROR_BODY = b"Internal Server Error"


def span_attribute(settings: Settings) -> str:
    return "http.request.header." + settings.request_id_header.lower()


# --- the core, shared by ASGI and WSGI --------------------------------------------------


class _Correlator:
    """What both middlewares do at the start of a request."""

    def __init__(self, settings: Settings | None) -> None:
        self.settings = settings or Settings.from_env(log=False)
        self.header = self.settings.request_id_header
        self.header_lower = self.header.lower()
        self.header_bytes = self.header_lower.encode("latin-1")
        self.incoming = tuple(h.lower() for h in self.settings.request_id_incoming_headers)
        self.attribute = span_attribute(self.settings)
        # Added on the first request, so a process that serves nothing (a
        # pure client) pays no per-span cost for it.
        self._processor_ready = False

    def request_id(self, lookup: Callable[[str], list[Any]]) -> str:
        for name in self.incoming:
            found = first_valid_request_id(lookup(name))
            if found is not None:
                return found
        return new_request_id()

    def context(self, request_id: str, authorization: Any) -> tuple[Context, _RequestState]:
        if not self._processor_ready:
            ensure_span_processor()
            self._processor_ready = True
        value = None
        if self.settings.auth_forward_to and authorization is not None:
            value = auth.valid_authorization(authorization)
        state = _RequestState(request_id, value, self.attribute)
        ctx = state.apply(otel_context.get_current())
        # When this middleware runs inside the upstream one (added by hand,
        # or Flask), the SERVER span already exists and is current.
        current = trace.get_current_span()
        if current.is_recording() and getattr(current, "kind", None) is SpanKind.SERVER:
            state.spans.append(current)
        return ctx, state


class _RequestState:
    """The request being handled, also kept in a contextvar of our own (see the span processor)."""

    __slots__ = ("request_id", "authorization", "attribute", "spans")

    def __init__(self, request_id: str, authorization: str | None, attribute: str) -> None:
        self.request_id = request_id
        self.authorization = authorization
        self.attribute = attribute
        self.spans: list[Any] = []

    def apply(self, ctx: Context) -> Context:
        ctx = set_request_id(self.request_id, ctx)
        if self.authorization is not None:
            ctx = auth.set_incoming_authorization(self.authorization, ctx)
        return ctx

    def applied(self) -> bool:
        if get_request_id() != self.request_id:
            return False
        return self.authorization is None or auth.get_incoming_authorization() == self.authorization

    def stamp(self) -> None:
        """(Re)write the attribute: it overrides a raw header captured by the upstream."""
        for span in self.spans:
            if span.is_recording():
                span.set_attribute(self.attribute, (self.request_id,))


_current_request: contextvars.ContextVar[_RequestState | None] = contextvars.ContextVar(
    "otel_integration_current_request", default=None
)


# --- ASGI ---------------------------------------------------------------------------------


class RequestIdMiddleware:
    """ASGI middleware: correlation ID in, in context, on the span, out on every response."""

    def __init__(self, app: Any, settings: Settings | None = None, *, serve_health: bool = True) -> None:
        self.app = app
        self._core = _Correlator(settings)
        self._serve_health = serve_health

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await _asgi(self._core, scope, receive, send, self.app, self._serve_health)


async def _asgi(core: _Correlator, scope: dict, receive: Callable, send: Callable, app: Any, serve_health: bool) -> None:
    if scope.get("type") not in ("http", "websocket") or SCOPE_KEY in scope:
        await app(scope, receive, send)
        return
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

    async def send_with_id(message: dict) -> None:
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
    state_token = _current_request.set(state)
    try:
        if serve_health and scope["type"] == "http" and _is_health_request(core.settings, scope):
            from otel_integration import health

            await health.asgi_endpoint(scope, receive, send_with_id)
            return
        try:
            await app(scope, receive, send_with_id)
        except Exception:
            if not started and scope["type"] == "http":
                await _send_internal_error(send_with_id)
            raise
        finally:
            state.stamp()
    finally:
        _current_request.reset(state_token)
        otel_context.detach(token)


def _is_health_request(settings: Settings, scope: dict) -> bool:
    return bool(settings.health_path) and scope.get("path") == settings.health_path and scope.get("method") in ("GET", "HEAD")


async def _send_internal_error(send: Callable) -> None:
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_INTERNAL_ERROR_BODY)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _INTERNAL_ERROR_BODY})
    except Exception:  # noqa: BLE001 - the client went away; the original error matters
        pass


# --- WSGI ---------------------------------------------------------------------------------


class RequestIdWSGIMiddleware:
    """WSGI middleware with the same behaviour as `RequestIdMiddleware`.

    An exception escaping the app before it started a response is logged
    (with the request ID) and answered with a 500 carrying the ID: a WSGI
    server would otherwise send its own 500 without it.
    """

    def __init__(self, app: Callable, settings: Settings | None = None, *, serve_health: bool = True) -> None:
        self.app = app
        self._core = _Correlator(settings)
        self._serve_health = serve_health

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        return _wsgi(self._core, environ, start_response, self.app, self._serve_health)


def _environ_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _wsgi(core: _Correlator, environ: dict, start_response: Callable, app: Callable, serve_health: bool) -> Iterable[bytes]:
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

    def start_with_id(status: str, headers: list, exc_info: Any = None) -> Callable:
        nonlocal started
        started = True
        if not any(name.lower() == core.header_lower for name, _ in headers):
            headers = [*headers, (core.header, request_id)]
        state.stamp()
        return start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)

    token = otel_context.attach(ctx)
    state_token = _current_request.set(state)
    try:
        if serve_health and core.settings.health_path and environ.get("PATH_INFO") == core.settings.health_path:
            from otel_integration import health

            return health.wsgi_endpoint(environ, start_with_id)
        try:
            result = app(environ, start_with_id)
        except Exception:
            if started:
                raise
            _logger.exception("Unhandled exception in WSGI application")
            start_with_id(
                "500 Internal Server Error",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(_INTERNAL_ERROR_BODY)))],
            )
            return [_INTERNAL_ERROR_BODY]
    finally:
        _current_request.reset(state_token)
        otel_context.detach(token)
    return _iterate_in_context(result, ctx, state)


def _iterate_in_context(result: Iterable[bytes], ctx: Context, state: _RequestState) -> Iterator[bytes]:
    """Stream the body with the request's context current (generators may log or call out)."""
    iterator = iter(result)
    try:
        while True:
            token, state_token = otel_context.attach(ctx), _current_request.set(state)
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            finally:
                _current_request.reset(state_token)
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


# --- the SERVER span --------------------------------------------------------------------


class RequestIdSpanProcessor(StartOnlySpanProcessor):
    """Stamps SERVER spans that start inside a request handled by the middleware.

    The middleware usually sits outside the upstream OpenTelemetry middleware
    (so that it also answers the 500s of unhandled exceptions). That
    middleware then starts the SERVER span from a context *extracted* from
    the headers, which holds our request ID only when the header was valid
    and the ``xrequestid`` propagator is configured. This processor runs as
    that span starts: it stamps the span and, when the now-current context
    lost the request's values, attaches them again. The upstream middleware
    restores the previous context at the end of the request, which also
    undoes this attach.
    """

    def __init__(self) -> None:
        self.active = True

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if not self.active or span.kind is not SpanKind.SERVER:
            return
        state = _current_request.get()
        if state is None:
            return
        span.set_attribute(state.attribute, (state.request_id,))
        state.spans.append(span)
        if not state.applied():
            otel_context.attach(state.apply(otel_context.get_current()))


_processors: weakref.WeakKeyDictionary[Any, RequestIdSpanProcessor] = weakref.WeakKeyDictionary()
_processors_lock = threading.Lock()


def ensure_span_processor(tracer_provider: Any = None) -> None:
    """Add `RequestIdSpanProcessor` to the (SDK) tracer provider, once."""
    provider = tracer_provider or trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):
        return  # no SDK (yet): no spans to stamp
    with _processors_lock:
        existing = _processors.get(provider)
        if existing is not None:
            existing.active = True
            return
        processor = RequestIdSpanProcessor()
        try:
            _processors[provider] = processor
        except TypeError:  # pragma: no cover - not weak-referenceable
            pass
    provider.add_span_processor(processor)


# --- the instrumentor (launcher hook) ------------------------------------------------------


def _attach_configured_features(layer: Any) -> None:
    """Auth forwarding and health statistics cost a little on every call: only when configured."""
    from otel_integration import health

    settings = layer.settings
    if settings.auth_forward_to:
        auth.attach(layer)
    if settings.health_path or settings.health_probes:
        health.attach(layer)


class ServerInstrumentor(BaseInstrumentor):
    """Loaded by ``opentelemetry-instrument`` (entry point ``otel_integration_server``).

    Disable it with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_integration_server``.
    Each framework patch is applied only when the framework is installed.
    """

    _patched: list[tuple[Any, str]] = []
    settings: Settings | None = None

    def instrumentation_dependencies(self) -> tuple[str, ...]:
        return ()  # every framework is optional; absent ones are skipped

    def _instrument(self, **kwargs: Any) -> None:
        settings = kwargs.get("settings") or Settings.from_env(log=False)
        if not settings.enabled:
            return
        ServerInstrumentor.settings = settings
        from otel_integration import logs
        from otel_integration.instrumentation import OtelIntegrationInstrumentor, on_new_layer

        auth.sanitize_sensitive_headers()
        logs.install(settings)
        if not getattr(ServerInstrumentor, "_hooks_registered", False):
            ServerInstrumentor._hooks_registered = True
            on_new_layer(_attach_configured_features)
        if OtelIntegrationInstrumentor.layer is not None:  # the httpx instrumentor ran first
            _attach_configured_features(OtelIntegrationInstrumentor.layer)
        core = _Correlator(settings)
        self._patch_starlette(core)
        self._patch_uvicorn(core)
        self._patch_flask(core)

    def _uninstrument(self, **kwargs: Any) -> None:
        from otel_integration import logs

        for owner, name in ServerInstrumentor._patched:
            attribute = getattr(owner, name, None)
            original = getattr(attribute, "__wrapped__", None)
            if original is not None:
                setattr(owner, name, original)
        ServerInstrumentor._patched = []
        for processor in list(_processors.values()):
            processor.active = False
        logs.uninstall()
        ServerInstrumentor.settings = None

    @staticmethod
    def _wrap(owner: Any, name: str, wrapper: Callable) -> None:
        from wrapt import FunctionWrapper

        current = owner.__dict__[name]
        if isinstance(current, FunctionWrapper):
            return  # already ours
        setattr(owner, name, FunctionWrapper(current, wrapper))
        ServerInstrumentor._patched.append((owner, name))

    def _patch_starlette(self, core: _Correlator) -> None:
        Starlette = _original_class("starlette.applications", "Starlette")
        if Starlette is None:
            return

        def call(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
            if len(args) != 3 or kwargs:
                return wrapped(*args, **kwargs)  # e.g. uvicorn probing for an app factory
            scope, receive, send = args
            return _asgi(core, scope, receive, send, wrapped, True)

        self._wrap(Starlette, "__call__", call)

    def _patch_uvicorn(self, core: _Correlator) -> None:
        try:
            from uvicorn.config import Config
        except ImportError:
            return

        def load(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
            result = wrapped(*args, **kwargs)
            if instance.interface != "wsgi" and not isinstance(instance.loaded_app, RequestIdMiddleware):
                app = instance.loaded_app
                if not _has_server_spans(instance):
                    app = _otel_asgi(app)
                instance.loaded_app = RequestIdMiddleware(app, core.settings)
            return result

        self._wrap(Config, "load", load)

    def _patch_flask(self, core: _Correlator) -> None:
        Flask = _original_class("flask.app", "Flask")
        if Flask is None:
            return

        def wsgi_app(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
            if len(args) != 2 or kwargs:
                return wrapped(*args, **kwargs)
            environ, start_response = args
            return _wsgi(core, environ, start_response, wrapped, True)

        self._wrap(Flask, "wsgi_app", wsgi_app)


def _original_class(module_name: str, name: str) -> Any:
    """The framework's own class, also when an instrumentation replaced the module attribute
    with a subclass (the starlette and flask instrumentations do)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    cls = getattr(module, name, None)
    for klass in getattr(cls, "__mro__", ()):
        if klass.__module__ == module_name and klass.__name__ == name:
            return klass
    return None


def _has_server_spans(config: Any) -> bool:
    """Whether the app uvicorn serves already gets SERVER spans from an instrumentation."""
    app = config.app
    if isinstance(app, str):
        if config.factory:
            return True  # unknown until called: do not risk double spans
        try:
            from uvicorn.importer import import_from_string

            app = import_from_string(app)
        except Exception:  # noqa: BLE001 - uvicorn already reported it
            return True
    starlette = _original_class("starlette.applications", "Starlette")
    if starlette is not None and isinstance(app, starlette):
        return True  # the starlette / fastapi instrumentations cover it
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return isinstance(app, OpenTelemetryMiddleware)
    except ImportError:
        return True


def _otel_asgi(app: Any) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app)
