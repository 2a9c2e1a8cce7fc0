"""W3C Trace Context extraction that follows the specification to the letter.

The SDK's `TraceContextTextMapPropagator` reads only the first ``traceparent``
header and logs every malformed ``tracestate`` member verbatim (an incoming
header, echoed into the service's logs). This subclass keeps the SDK's types
and its `inject`, and replaces `extract` with the specification's rules
(W3C Trace Context Level 1, §3.2 and §3.3; Level 2 adds the random flag):

- a ``traceparent`` sent more than once is invalid: the trace restarts
  (§3.2: one header; a proxy that joined two copies with ``,`` yields a value
  that fails the format check, with the same result);
- version ``00`` is exactly ``00-<32 hex>-<16 hex>-<2 hex>``; a higher
  version is parsed for those fields and may carry more after a ``-``
  (§3.2.4 Versioning); ``ff`` is invalid (§3.2.2.1); all-zero IDs are
  invalid (§3.2.2.3, §3.2.2.4); leading and trailing spaces/tabs are ignored;
- trace-flags keep the bits the specification defines, sampled (0x01) and,
  Level 2, random-trace-id (0x02); the others are reserved (§3.2.2.5);
- ``tracestate`` is read only when ``traceparent`` is valid (§3.3); several
  ``tracestate`` fields are combined in order (§3.3.1.1); empty and
  whitespace-only members are ignored; one invalid member, a duplicated key
  (§3.3.1.5) or more than 32 members (§3.3.1.2) discards the whole
  tracestate but keeps the trace; keys follow §3.3.1.3.1 (``simple-key``,
  or ``tenant-id@system-id``), values §3.3.1.3.2.

Nothing of a malformed header is logged: the reason goes to DEBUG, without the value.
"""

from __future__ import annotations

import logging
import re

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

_logger = logging.getLogger(__name__)

MAX_TRACESTATE_MEMBERS = 32
# The combined tracestate we accept; the specification asks for at least 512.
MAX_TRACESTATE_LENGTH = 8192
KNOWN_FLAGS = 0x03  # sampled (Level 1) and random-trace-id (Level 2)

_OWS = " \t"
_HEX = re.compile(r"[0-9a-f]+")
_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}"  # simple-key
    r"|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"  # multi-tenant-key
)
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """(trace_id, span_id, flags) of a traceparent header value, or None when it is invalid."""
    value = value.strip(_OWS)
    version = value[:2]
    if len(value) < 55 or value[2:3] != "-" or not _HEX.fullmatch(version) or version == "ff":
        _invalid("traceparent", "version")
        return None
    if version == "00":
        match = _VERSION_00.fullmatch(value)
        if match is None:
            _invalid("traceparent", "format of version 00")
            return None
        trace_id, span_id, flags = match.groups()
    else:
        # A later version: the version-00 fields where version 00 has them, then the end or "-".
        trace_id, span_id, flags = value[3:35], value[36:52], value[53:55]
        if (
            value[35:36] != "-" or value[52:53] != "-" or value[55:56] not in ("", "-")
            or not (_HEX.fullmatch(trace_id) and _HEX.fullmatch(span_id) and _HEX.fullmatch(flags))
            or len(trace_id) != 32 or len(span_id) != 16 or len(flags) != 2
        ):
            _invalid("traceparent", "format of a later version")
            return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        _invalid("traceparent", "all-zero ID")
        return None
    return int(trace_id, 16), int(span_id, 16), int(flags, 16) & KNOWN_FLAGS


def parse_tracestate(fields: list[str]) -> TraceState:
    """The combined tracestate fields as a TraceState; empty when any member is invalid."""
    if sum(len(f) + 1 for f in fields) - 1 > MAX_TRACESTATE_LENGTH:
        return _discard("longer than %d characters" % MAX_TRACESTATE_LENGTH)
    pairs: dict[str, str] = {}
    for field in fields:
        for member in field.split(","):
            member = member.strip(_OWS)
            if not member:
                continue
            key, equals, value = member.partition("=")
            if not equals or _KEY.fullmatch(key) is None or _VALUE.fullmatch(value) is None:
                return _discard("a member is not key=value as the specification defines them")
            if key in pairs:
                return _discard("a key appears twice")
            if len(pairs) == MAX_TRACESTATE_MEMBERS:
                return _discard("more than %d members" % MAX_TRACESTATE_MEMBERS)
            pairs[key] = value
    # Every pair is valid and unique, so TraceState() accepts them all without logging.
    return TraceState(list(pairs.items()))


class W3CTraceContextPropagator(TraceContextTextMapPropagator):
    """The SDK's trace-context propagator with a conformant `extract` (see the module docstring)."""

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        if context is None:
            context = Context()
        headers = _fields(getter.get(carrier, self._TRACEPARENT_HEADER_NAME))
        if not headers:
            return context
        if len(headers) > 1:
            _invalid("traceparent", "sent more than once")
            return context
        parsed = parse_traceparent(headers[0])
        if parsed is None:
            return context
        trace_id, span_id, flags = parsed
        tracestate_fields = _fields(getter.get(carrier, self._TRACESTATE_HEADER_NAME))
        span_context = trace.SpanContext(
            trace_id=trace_id,
            span_id=span_id,
            is_remote=True,
            trace_flags=trace.TraceFlags(flags),
            trace_state=parse_tracestate(tracestate_fields) if tracestate_fields else None,
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)


def _fields(values: object) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return [v for v in values if isinstance(v, str)]  # type: ignore[attr-defined]


def _invalid(header: str, reason: str) -> None:
    _logger.debug("incoming %s ignored (%s); the trace restarts", header, reason)


def _discard(reason: str) -> TraceState:
    _logger.debug("incoming tracestate discarded (%s)", reason)
    return TraceState()
