"""The export path: spans and log records are scrubbed just before they leave the process.

The configurator (`_distro.py`) wraps every span and log exporter it builds:

- secrets are redacted (`_redaction.py`) in URL attributes (``url.full``,
  ``url.query``, ``url.fragment`` and the older ``http.url``/``http.target``),
  in exception messages and stack traces (span events and log attributes), in
  span status descriptions and in log bodies;
- control characters are escaped (`_escape.py`) in every attribute a request
  can fill: the URL parts, ``user_agent.original``, addresses, captured
  headers (``http.request.header.*`` / ``http.response.header.*``), and in span names.

Here, rather than when a span starts, because the final values are known
only at the end: the upstream server instrumentations set the request
attributes again after their span started, and an exception is recorded
last. The work runs on the export thread, not in a request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from otel_integration._escape import escape_controls
from otel_integration._redaction import Redactor

_logger = logging.getLogger(__name__)

# attribute -> how its secrets are redacted
_URLS = {"url.full": "url", "http.url": "url", "url.query": "query", "url.fragment": "query", "http.target": "target"}
# Attributes a request (or a downstream's response) fills, besides the URL ones and the captured headers.
REQUEST_ATTRIBUTES = frozenset({
    "url.path", "url.scheme", "http.route", "http.request.method", "http.request.method_original",
    "user_agent.original", "http.user_agent", "server.address", "client.address", "network.peer.address",
    "http.host", "http.server_name", "http.client_ip", "net.host.name", "net.peer.name", "http.scheme",
})
_HEADER_PREFIXES = ("http.request.header.", "http.response.header.")
_EXCEPTION_TEXT = ("exception.message", "exception.stacktrace")


class Scrubber:
    """The scrubbing rules, applied to attribute mappings and texts."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def attribute(self, key: str, value: Any) -> Any:
        how = _URLS.get(key)
        if how is not None and isinstance(value, str):
            if how == "url":
                value = self.redactor.url(value)
            elif how == "query":
                value = self.redactor.query(value)
            else:  # http.target: path?query
                path, question, query = value.partition("?")
                value = f"{path}{question}{self.redactor.query(query)}"
            return escape_controls(value)
        if key in REQUEST_ATTRIBUTES or key.startswith(_HEADER_PREFIXES):
            if isinstance(value, str):
                return escape_controls(value)
            if isinstance(value, (tuple, list)):
                return tuple(escape_controls(v) if isinstance(v, str) else v for v in value)
        if key in _EXCEPTION_TEXT and isinstance(value, str):
            return self.redactor.text(value)
        return value

    def attributes(self, attributes: Mapping[str, Any] | None, dropped: int = 0) -> Mapping[str, Any] | None:
        """The scrubbed attributes, or `attributes` itself when nothing changes; `dropped` is kept."""
        if not attributes:
            return attributes
        changed: dict[str, Any] | None = None
        for key, value in attributes.items():
            new = self.attribute(key, value)
            if new != value:
                if changed is None:
                    changed = dict(attributes)
                changed[key] = new
        if changed is None:
            return attributes
        bounded = BoundedAttributes(maxlen=None, attributes=changed, immutable=True)
        bounded.dropped = dropped
        return bounded

    def span(self, span: ReadableSpan) -> ReadableSpan:
        original = span.attributes  # a new read-only view at each access: keep this one
        attributes = self.attributes(original, span.dropped_attributes)
        original_events = span.events
        events = [self.event(e) for e in original_events]
        name = escape_controls(span.name)
        status = span.status
        if status.description:
            description = escape_controls(self.redactor.text(status.description))
            if description != status.description:
                status = Status(status.status_code, description)
        if (
            attributes is original and name == span.name and status is span.status
            and all(new is old for new, old in zip(events, original_events))
        ):
            return span
        return ReadableSpan(
            name=name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=attributes,
            events=events,
            links=span.links,
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def event(self, event: Any) -> Any:
        original = event.attributes
        attributes = self.attributes(original, getattr(event, "dropped_attributes", 0))
        if attributes is original:
            return event
        return Event(event.name, attributes, event.timestamp)

    def log_record(self, readable: ReadableLogRecord) -> ReadableLogRecord:
        """The same record, its body and attributes scrubbed in place (the export thread owns it now)."""
        record = readable.log_record
        if isinstance(record.body, str):
            record.body = self.redactor.text(record.body)
        attributes = self.attributes(record.attributes, readable.dropped_attributes)
        if attributes is not record.attributes:
            record.attributes = attributes
        return readable


class ScrubbingSpanExporter(SpanExporter):
    """Exports through `exporter` what `Scrubber.span` made of each span."""

    def __init__(self, exporter: SpanExporter, scrubber: Scrubber) -> None:
        self.exporter = exporter
        self.scrubber = scrubber

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export(_each(spans, self.scrubber.span))

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class ScrubbingLogExporter(LogRecordExporter):
    """Exports through `exporter` the records after `Scrubber.log_record`."""

    def __init__(self, exporter: LogRecordExporter, scrubber: Scrubber) -> None:
        self.exporter = exporter
        self.scrubber = scrubber

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return self.exporter.export(_each(batch, self.scrubber.log_record))

    def shutdown(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


T = TypeVar("T")
_warned = {"scrub": False}


def _each(items: Sequence[T], scrub: Callable[[T], T]) -> list[T]:
    """`scrub` applied to each item; an item it fails on is dropped rather than sent unscrubbed."""
    out = []
    for item in items:
        try:
            out.append(scrub(item))
        except Exception:  # noqa: BLE001 - one odd item must not lose the batch
            if not _warned["scrub"]:
                _warned["scrub"] = True
                _logger.warning("otel-integration: telemetry that could not be scrubbed was dropped", exc_info=True)
    return out
