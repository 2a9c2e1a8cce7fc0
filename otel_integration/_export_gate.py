"""A dead collector costs one line and no time: the gate in front of the OTLP/HTTP exporters.

Without it, a process with no collector to talk to prints exporter warnings
for every retry of every batch, and at exit waits for each signal's exporter
to retry until its timeout (13 s for a one-request script here; 20 s with a
black-holed collector). The distro hands each OTLP/HTTP exporter a
`GatedSession` (the exporters' own ``session`` argument), and all of them
share one `ExportGate` per endpoint:

- a connection error, a timeout or an answer the exporters would retry
  (`UNAVAILABLE_STATUSES`: 429, 502, 503, 504) closes the gate: for `RETRY_AFTER` seconds
  exports are not sent at all (the exporter gets an answer it does not retry,
  at once), then one export tries again; one WARNING says where telemetry
  could not be sent and how to start a receiver, one INFO when it works again;
- connecting takes at most `CONNECT_TIMEOUT` seconds, and until the endpoint
  has answered once, an answer may take at most `UNPROVEN_TIMEOUT` seconds (a
  black-holed collector: the exporters' own timeout is 10 s, and an export in
  flight holds the exit until it ends);
- once the process is exiting (`begin_exit`), every export gets one try
  within what is left of the exit budget, and no retry.

The exporters' own log lines about batches the gate refused are dropped
(`GateLogFilter`); anything else they log is kept.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests

_logger = logging.getLogger("otel_integration")

CONNECT_TIMEOUT = 1.0  # seconds
UNPROVEN_TIMEOUT = 2.0  # seconds to answer, until the endpoint has answered once
RETRY_AFTER = 5.0  # seconds without sending once the endpoint failed
EXIT_BUDGET = 2.0  # seconds for the exports made while exiting normally
# The answers the OTLP exporters retry (with connection errors): the gate closes on them.
UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
# Not retried by the OTLP exporters.
_REFUSED_STATUS = 599
REFUSED_REASON = "not sent by otel-integration: the OTLP endpoint is unreachable"

EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.exporter.otlp.common.http",
)


class ExportGate:
    """The state of one endpoint (scheme://host:port), shared by the exporters sending to it."""

    def __init__(self, endpoint: str, clock: Any = time.monotonic) -> None:
        self.endpoint = endpoint
        self._clock = clock
        self._lock = threading.Lock()
        self.closed_until = 0.0
        self.down = False
        self.proven = False  # it answered once: its own timeout applies from now on
        self.exit_deadline: float | None = None  # set when the process is exiting
        self.refused = 0  # exports not sent

    def admits(self) -> bool:
        now = self._clock()
        if self.exit_deadline is not None and now >= self.exit_deadline:
            return False
        return not self.down or now >= self.closed_until

    def failed(self, error: BaseException) -> None:
        with self._lock:
            first = not self.down
            self.down = True
            self.closed_until = self._clock() + RETRY_AFTER
        if first:
            _logger.warning(
                "otel-integration: cannot send telemetry to %s (%s); it is dropped until the endpoint answers "
                "(tried again every %g s). No collector running? Start a receiver with `otel-integration "
                "receive`, or the stack in collector/ (docker compose -f collector/compose.yaml up -d).",
                self.endpoint, _describe(error), RETRY_AFTER,
            )

    def worked(self) -> None:
        self.proven = True
        if self.down:
            with self._lock:
                was_down, self.down = self.down, False
            if was_down:
                _logger.info("otel-integration: telemetry export to %s works again", self.endpoint)

    def remaining_exit_time(self) -> float | None:
        if self.exit_deadline is None:
            return None
        return max(0.0, self.exit_deadline - float(self._clock()))


_gates: dict[str, ExportGate] = {}
_gates_lock = threading.Lock()
_exit_deadline: list[float] = []  # set once the process is exiting


def gate_for(url: str) -> ExportGate:
    parts = urlsplit(url)
    endpoint = f"{parts.scheme}://{parts.netloc}"
    with _gates_lock:
        gate = _gates.get(endpoint)
        if gate is None:
            gate = _gates[endpoint] = ExportGate(endpoint)
            if _exit_deadline:  # the first export happens at exit (a short script)
                gate.exit_deadline = _exit_deadline[0]
        return gate


def begin_exit(budget: float = EXIT_BUDGET) -> None:
    """From now on every export gets one try, within `budget` seconds in all."""
    with _gates_lock:
        if not _exit_deadline:
            _exit_deadline.append(time.monotonic() + budget)
        deadline = _exit_deadline[0]
        for gate in _gates.values():
            if gate.exit_deadline is None:
                gate.exit_deadline = deadline


class _Answered(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"it answered HTTP {status}")


def _describe(error: BaseException) -> str:
    if isinstance(error, _Answered):
        return str(error)
    text = str(error)
    for needle, short in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                          ("Name or service not known", "unknown host"), ("Failed to resolve", "unknown host")):
        if needle in text:
            return short
    return type(error).__name__


def _refused(url: str) -> requests.Response:
    """An answer the exporter takes as final at once: no retry, no backoff sleep."""
    response = requests.Response()
    response.status_code = _REFUSED_STATUS
    response.reason = REFUSED_REASON
    response.url = url
    response._content = b""
    return response


class GatedSession(requests.Session):
    """The session the OTLP/HTTP exporters send with (their ``session`` argument)."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        target = url.decode() if isinstance(url, bytes) else url
        gate = gate_for(target)
        if not gate.admits():
            gate.refused += 1
            return _refused(target)
        read = kwargs.get("timeout")
        if isinstance(read, (int, float)) or read is None:
            caps = [c for c in (read, gate.remaining_exit_time(), None if gate.proven else UNPROVEN_TIMEOUT) if c is not None]
            read = min(caps) if caps else None
            kwargs["timeout"] = (min(CONNECT_TIMEOUT, read) if read is not None else CONNECT_TIMEOUT, read)
        try:
            response = super().request(method.decode() if isinstance(method, bytes) else method, target, *args, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            gate.failed(error)
            return _refused(target)
        if 200 <= response.status_code < 300:
            gate.worked()
        elif response.status_code in UNAVAILABLE_STATUSES or gate.exit_deadline is not None:
            # An endpoint that says it cannot take telemetry now is treated as one that is down
            # (the exporters would retry each batch with a warning per retry); exiting, any
            # refusal gets no retry. One line says so.
            gate.failed(_Answered(response.status_code))
            return _refused(target)
        return response


class GateLogFilter(logging.Filter):
    """Drops the exporters' lines about exports the gate did not send (its own WARNING said it once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return REFUSED_REASON not in record.getMessage()
        except Exception:  # noqa: BLE001 - a bad record is not ours to judge
            return True


GATE_LOG_FILTER = GateLogFilter()


def exporter_arguments() -> dict[type, dict[str, Any]]:
    """The configurator's ``exporter_args_map``: a gated session for each OTLP/HTTP exporter class."""
    arguments: dict[type, dict[str, Any]] = {}
    try:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        return arguments
    for exporter, signal in ((OTLPSpanExporter, "TRACES"), (OTLPMetricExporter, "METRICS"), (OTLPLogExporter, "LOGS")):
        if os.environ.get(f"OTEL_PYTHON_EXPORTER_OTLP_HTTP_{signal}_CREDENTIAL_PROVIDER"):
            continue  # the user's own session (a credential provider) is left alone, ungated
        arguments[exporter] = {"session": GatedSession()}
    for name in EXPORTER_LOGGERS:
        logging.getLogger(name).addFilter(GATE_LOG_FILTER)
    return arguments
