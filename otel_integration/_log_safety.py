"""What a stdlib log record may carry out of the process, whatever handler writes it.

Run by the distro's log record factory (`_logs.py`) as each record is made,
so stderr, files and the OTLP export all get the same, safe record:

- records of OpenTelemetry's loggers and of httpx: each argument is escaped
  (`_escape.py`: no raw CR, LF, NUL, ESC...), cut to 256 characters, and
  stripped of URL secrets. OpenTelemetry quotes the tracestate or baggage it
  could not parse (request headers); httpx's INFO line prints the request URL
  with its query and ``user:password@``;
- access-log records (uvicorn, gunicorn, hypercorn, the Flask development
  server): secret parameters of the logged query strings become ``REDACTED``;
- any record with an exception: when the exception's message (or a chained
  one's) holds a URL with a secret, as ``raise_for_status()`` messages do,
  the formatted traceback is redacted (set as ``record.exc_text``, which
  formatters print instead of formatting the traceback again).

The message format of a record is never changed beyond that.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from otel_integration._escape import bounded, escape_controls
from otel_integration._redaction import DEFAULT, Redactor

QUOTING_LOGGERS = ("opentelemetry", "httpx")
ACCESS_LOGGERS = frozenset({"uvicorn.access", "gunicorn.access", "hypercorn.access", "werkzeug"})
_QUERY = re.compile(r"\?([^\s\"'#]*)")
_TRACEBACK = logging.Formatter()
_state = {"redactor": DEFAULT}


def use_redactor(redactor: Redactor) -> None:
    """The redaction rules (``OTEL_INTEGRATION_REDACT_QUERY_PARAMS`` included) records get."""
    _state["redactor"] = redactor


def make_safe(record: logging.LogRecord) -> None:
    name = record.name
    if name.startswith(QUOTING_LOGGERS):
        _map_arguments(record, _quoted)
        if isinstance(record.msg, str):
            record.msg = escape_controls(record.msg)
    elif name in ACCESS_LOGGERS:
        _map_arguments(record, _request_line)
    if record.exc_info and _mentions_a_url(record.exc_info[1]):
        text = _TRACEBACK.formatException(record.exc_info)
        redacted = _state["redactor"].text(text)
        if redacted != text:
            record.exc_text = redacted


def _map_arguments(record: logging.LogRecord, safe: Any) -> None:
    args = record.args
    if isinstance(args, tuple):
        record.args = tuple(safe(a) for a in args)
    elif isinstance(args, dict):
        record.args = {k: safe(v) for k, v in args.items()}


def _quoted(value: object) -> object:
    if isinstance(value, (int, float)) or value is None:
        return value  # %d and %f need numbers; these are not text anyway
    if isinstance(value, str) or type(value).__name__ == "URL":
        return bounded(_state["redactor"].text(str(value)))
    if isinstance(value, bytes):
        return bounded(value.decode("utf-8", "backslashreplace"))
    return value


def _request_line(value: object) -> object:
    if isinstance(value, str) and "=" in value:
        if "?" in value:
            return _QUERY.sub(lambda m: "?" + _state["redactor"].query(m.group(1)), value)
        return _state["redactor"].query(value)  # gunicorn's %(q)s: the query string alone
    return value


def _mentions_a_url(error: BaseException | None) -> bool:
    seen = 0
    while error is not None and seen < 8:
        if "://" in str(error):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False
