"""The request being handled: its correlation ID, in the context, on the SERVER span.

Shared by the ASGI and WSGI middlewares (`asgi.py`, `wsgi.py`). For every
request a service handles:

1. The correlation ID is the first *valid* value (`valid_request_id`) among
   the incoming headers ``OTEL_INTEGRATION_REQUEST_ID_INCOMING_HEADERS``
   (X-Request-ID, X-Correlation-ID, X-Trace-ID), else a fresh UUID4. A bad
   value (CR/LF, 10 KB, non-ASCII) is treated as absent: it is never echoed,
   logged, recorded or forwarded.
2. It is made current in the OpenTelemetry context (`set_request_id`) for
   the whole request, so every httpx call made while handling it carries
   it, and every log record gets it.
3. It is echoed on every response under ``OTEL_INTEGRATION_REQUEST_ID_HEADER``,
   unless the app set that header itself.
4. It is recorded on the SERVER span as ``http.request.header.x-request-id``
   (a string array, as the HTTP semantic conventions say), by
   `RequestIdSpanProcessor` as the span starts, or at once when the span
   already exists (the middleware inside the upstream one). The app, and
   so the upstream instrumentation when it captures request headers, sees
   the validated value only, so nothing overwrites the attribute later.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span
from opentelemetry.trace import INVALID_SPAN, SpanKind

from otel_integration import _auth as auth
from otel_integration._propagation import (
    CARRIER_KEY,
    first_valid_request_id,
    get_request_id,
    new_request_id,
    set_request_id,
)
from otel_integration._settings import Settings
from otel_integration._telemetry import StartOnlySpanProcessor, add_clean_attributes

# Set in the ASGI scope / WSGI environ by the instance that handles the request
# (the propagator reads it there too: `RequestIdPropagator.extract`).
SCOPE_KEY = CARRIER_KEY

INTERNAL_ERROR_BODY = b"Internal Server Error"


def span_attribute(settings: Settings) -> str:
    return "http.request.header." + settings.request_id_header.lower()


def _environ_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class Correlator:
    """What both middlewares do at the start of a request; everything derived from the settings once."""

    def __init__(self, settings: Settings | None) -> None:
        self.settings = settings or Settings.from_env(log=False)
        self.header = self.settings.request_id_header
        self.header_lower = self.header.lower()
        self.header_bytes = self.header_lower.encode("latin-1")
        self.incoming = tuple(h.lower() for h in self.settings.request_id_incoming_headers)
        self.incoming_bytes = tuple(h.encode("latin-1") for h in self.incoming)
        self.incoming_environ = tuple(_environ_name(h) for h in self.incoming)
        self.header_environ = _environ_name(self.header)
        self.forward_auth = bool(self.settings.auth_forward_to)
        # The header names one pass over the ASGI headers looks for.
        self.wanted = frozenset([*self.incoming_bytes, self.header_bytes, *([b"authorization"] if self.forward_auth else [])])
        self.health_path = self.settings.health_path
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

    def context(self, request_id: str, authorization: Any) -> tuple[Context, RequestState]:
        if not self._processor_ready:
            ensure_span_processor()
            self._processor_ready = True
        value = None
        if authorization is not None and self.forward_auth:
            value = auth.valid_authorization(authorization)
        state = RequestState(request_id, value, self.attribute)
        outer = otel_context.get_current()
        ctx = state.apply(outer)
        # When this middleware runs inside the upstream one (added by hand), the
        # SERVER span already exists, with whatever raw header it captured: the
        # validated value replaces it now.
        current = trace.get_current_span(outer)
        if current is not INVALID_SPAN and current.is_recording() and getattr(current, "kind", None) is SpanKind.SERVER:
            current.set_attribute(self.attribute, (request_id,))
        return ctx, state


class RequestState:
    """The request being handled, also kept in a contextvar of our own (see the span processor)."""

    __slots__ = ("request_id", "authorization", "attribute")

    def __init__(self, request_id: str, authorization: str | None, attribute: str) -> None:
        self.request_id = request_id
        self.authorization = authorization
        self.attribute = attribute

    def apply(self, ctx: Context) -> Context:
        ctx = set_request_id(self.request_id, ctx)
        if self.authorization is not None:
            ctx = auth.set_incoming_authorization(self.authorization, ctx)
        return ctx

    def applied(self) -> bool:
        if get_request_id() != self.request_id:
            return False
        return self.authorization is None or auth.get_incoming_authorization() == self.authorization


current_request: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar(
    "otel_integration.current_request", default=None
)

# --- the SERVER span ---------------------------------------------------------------------


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
        if span.kind is not SpanKind.SERVER or not self.active:
            return
        state = current_request.get()
        if state is None:
            return
        add_clean_attributes(span, {state.attribute: (state.request_id,)})
        if not state.applied():
            otel_context.attach(state.apply(otel_context.get_current()))


_processors: weakref.WeakKeyDictionary[Any, RequestIdSpanProcessor] = weakref.WeakKeyDictionary()
_processors_lock = threading.Lock()


def deactivate_span_processors() -> None:
    """A span processor cannot be removed from a provider: uninstrumenting switches ours off."""
    for processor in list(_processors.values()):
        processor.active = False


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


