"""What the distro adds to spans.

The upstream httpx instrumentation creates one CLIENT span per physical
attempt (it wraps `httpx.HTTPTransport`). It does not know which attempt of a
logical call it is tracing, so the call core (`call.py`) publishes that in a
context variable and `AttemptSpanProcessor` copies it onto the span when the
span starts: `http.request.resend_count` for resends (stable HTTP semantic
conventions), the correlation ID as `http.request.header.x-request-id` (the
semconv form of a captured header; the upstream header capture would write
`x_request_id`) and `peer.service` for logically named downstreams.

Secrets in URLs are redacted on the export path (`_scrubbing.py`), where the
final attribute values are known.

A call that never reaches the network (refused by an open breaker or a failing
probe) has no upstream span; `record_rejected_call` creates the CLIENT span for it.
With the response cache on, both carry `http.client.cache.outcome` (the cache's
own spans, of hits and stale answers, are made in `cache.py`).
"""

from __future__ import annotations

import contextvars

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_integration._telemetry import StartOnlySpanProcessor, add_clean_attributes

from otel_integration.errors import error_type

HTTPX_SCOPE = "opentelemetry.instrumentation.httpx"
RESEND_COUNT = "http.request.resend_count"
PEER_SERVICE = "peer.service"
REQUEST_BODY_NOT_REPLAYABLE = "otel_integration.request.body_not_replayable"
# What the response cache did for the call (`cache.py`): hit, miss, stale or bypass.
CACHE_OUTCOME = "http.client.cache.outcome"

class AttemptInfo:
    """One physical attempt of a logical call, as published to the span processor."""

    __slots__ = ("resend_count", "request_id_attribute", "request_id", "peer_service", "body_not_replayable")

    def __init__(
        self,
        resend_count: int,
        request_id_attribute: str,  # http.request.header.<name>
        request_id: tuple[str] | None,  # None: the caller's own header was not a valid ID
        peer_service: str | None,
        body_not_replayable: bool = False,
    ) -> None:
        self.resend_count = resend_count
        self.request_id_attribute = request_id_attribute
        self.request_id = request_id
        self.peer_service = peer_service
        self.body_not_replayable = body_not_replayable


def request_id_attribute(header: str) -> str:
    return "http.request.header." + header.lower()


current_attempt: contextvars.ContextVar[AttemptInfo | None] = contextvars.ContextVar(
    "otel_integration_current_attempt", default=None
)


# Set by the caching transports around the call they send (`async_cache.py`): every attempt's span,
# and the span of a refused call, says the cache could not answer (miss) or was not asked (bypass).
current_cache_outcome: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "otel_integration_current_cache_outcome", default=None
)


class AttemptSpanProcessor(StartOnlySpanProcessor):
    """Annotates httpx CLIENT spans with the attempt published by the transport."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.kind is not SpanKind.CLIENT:
            return
        attempt = current_attempt.get()
        if attempt is None:
            return
        scope = span.instrumentation_scope
        if scope is None or scope.name != HTTPX_SCOPE:
            return
        attributes: dict[str, str | int | bool | tuple[str]] = {}
        if attempt.request_id is not None:
            attributes[attempt.request_id_attribute] = attempt.request_id
        if attempt.resend_count:
            attributes[RESEND_COUNT] = attempt.resend_count
        if attempt.peer_service:
            attributes[PEER_SERVICE] = attempt.peer_service
        if attempt.body_not_replayable:
            attributes[REQUEST_BODY_NOT_REPLAYABLE] = True
        outcome = current_cache_outcome.get()
        if outcome is not None:
            attributes[CACHE_OUTCOME] = outcome
        add_clean_attributes(span, attributes)


def record_rejected_call(
    tracer: trace.Tracer,
    *,
    method: str,
    host: str,
    port: int,
    url: str,
    error: BaseException,
    attempt: AttemptInfo,
) -> None:
    """A CLIENT span for a call failed fast without network I/O."""
    attributes: dict[str, str | int | tuple[str]] = {
        "http.request.method": method,
        "server.address": host,
        "server.port": port,
        "url.full": url,
        "error.type": error_type(type(error)),
    }
    if attempt.request_id is not None:
        attributes[attempt.request_id_attribute] = attempt.request_id
    if attempt.resend_count:
        attributes[RESEND_COUNT] = attempt.resend_count
    if attempt.peer_service:
        attributes[PEER_SERVICE] = attempt.peer_service
    outcome = current_cache_outcome.get()
    if outcome is not None:
        attributes[CACHE_OUTCOME] = outcome
    span = tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)
    span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end()
