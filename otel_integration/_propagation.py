"""The X-Request-ID correlation ID: validation, context, and the propagator.

The ID lives in the OpenTelemetry `Context` under one key, so it flows
wherever the trace context flows: into threads started with
`contextvars.copy_context()`, into asyncio tasks, and through every
instrumentation that calls `opentelemetry.propagate.inject`.

Who sets it:
- a server (the ASGI/WSGI instrumentation calls `propagate.extract`, which
  reads it from the incoming headers through this propagator);
- the distro's httpx transport, for one logical call that has none yet, so
  that every attempt (retry) of the call carries the same ID.

Use it under ``OTEL_PROPAGATORS=tracecontext,baggage,xrequestid`` (the
distro's default), or directly::

    from otel_integration import RequestIdPropagator
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from otel_integration._client.tracing import current_attempt

MAX_REQUEST_ID_LENGTH = 128
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,%d}" % MAX_REQUEST_ID_LENGTH)

REQUEST_ID_KEY = otel_context.create_key("otel_integration.request_id")

# Where the server middleware (`_server/`) leaves the request's validated ID in the
# ASGI scope / WSGI environ it handles: the carrier the upstream server
# instrumentations then extract from.
CARRIER_KEY = "otel_integration.request_id"

DEFAULT_HEADER = "X-Request-ID"
DEFAULT_INCOMING_HEADERS = ("X-Request-ID", "X-Correlation-ID", "X-Trace-ID")


def valid_request_id(value: object) -> str | None:
    """`value` if it is a safe correlation ID, else None.

    Safe: 1 to 128 characters from letters, digits, ``-``, ``_``, ``.``, ``:``.
    Anything else (CR/LF, NUL, spaces, non-ASCII, huge values) is treated as
    absent, so it is never echoed, logged or injected into another request.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str) and len(value) <= MAX_REQUEST_ID_LENGTH and _VALID_REQUEST_ID.fullmatch(value):
        return value
    return None


def new_request_id() -> str:
    """A random UUID4 in its 32-hex-digit form, as ``uuid.uuid4().hex`` (asgi-correlation-id's default).

    Without the dashes: placing them costs twice what the random bytes do
    (about 5,000 instructions, on every call and every incoming request).
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def get_request_id(context: Context | None = None) -> str | None:
    """The correlation ID of the current (or given) context, if any."""
    return otel_context.get_value(REQUEST_ID_KEY, context)  # type: ignore[return-value]


def set_request_id(request_id: str, context: Context | None = None) -> Context:
    """A context carrying `request_id` (which must already be valid)."""
    return otel_context.set_value(REQUEST_ID_KEY, request_id, context)


def first_valid_request_id(values: Iterable[object]) -> str | None:
    for value in values:
        valid = valid_request_id(value)
        if valid is not None:
            return valid
    return None


class RequestIdPropagator(TextMapPropagator):
    """Extracts and injects the correlation ID header.

    extract: the first *valid* value among the incoming header names (a
    header may be repeated; each value is tried). Invalid values are ignored.
    inject: the ID of the outgoing call in progress (the retry transport fixes
    one per logical call), else the current context's, else a fresh UUID4,
    under the outgoing header name. The outgoing name is also the first incoming one.
    """

    def __init__(
        self,
        header: str | None = None,
        incoming_headers: Iterable[str] | None = None,
    ) -> None:
        self.enabled = True
        if header is None or incoming_headers is None:
            from otel_integration._settings import Settings  # avoid a cycle at import time

            # Built by name from OTEL_PROPAGATORS: the settings say what it does,
            # and OTEL_INTEGRATION_ENABLED=false makes it do nothing.
            settings = Settings.from_env(log=False)
            self.enabled = settings.enabled
            header = header or settings.request_id_header
            incoming_headers = incoming_headers or settings.request_id_incoming_headers
        self.header = header
        self.incoming_headers = tuple(incoming_headers)

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        if context is None:
            context = otel_context.get_current()
        if not self.enabled:
            return context
        if isinstance(carrier, dict):
            # A request our server middleware handles: it chose the ID already (the
            # header of the carrier holds that same value); reading the headers again,
            # decoding and validating them, would find nothing else.
            handled = carrier.get(CARRIER_KEY)
            if handled is not None:
                if get_request_id(context) == handled:
                    return context  # the middleware's own context (the upstream one extracts into it)
                return set_request_id(handled, context)
        for name in self.incoming_headers:
            values = getter.get(carrier, name)
            if values is None and name.lower() != name:
                values = getter.get(carrier, name.lower())
            if values:
                found = first_valid_request_id(values)
                if found is not None:
                    return set_request_id(found, context)
        return context

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        if not self.enabled:
            return
        if context is None and current_attempt.get() is not None:
            # An attempt of the retry transport: it already put the call's
            # ID on the request, whose headers the httpx instrumentation
            # passes here as the carrier. Setting it again would cost a
            # header rewrite on every request.
            return
        setter.set(carrier, self.header, get_request_id(context) or new_request_id())

    @property
    def fields(self) -> set[str]:
        return {self.header}
