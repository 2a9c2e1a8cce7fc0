"""Active health probes: a downstream whose probe fails is not called at all.

``OTEL_INTEGRATION_HEALTH_PROBES=extract=http://extract:8081/healthz`` gives the
downstream ``extract`` a probe: a plain ``GET`` with the standard library (no
instrumentation, no retries, no breaker) in a background thread, at most once
per ``OTEL_INTEGRATION_HEALTH_PROBE_TTL`` seconds, never on a caller's thread.
While its last result is failing (no answer within `PROBE_TIMEOUT`, or a status
other than 2xx/3xx), calls to that downstream fail fast with
`DownstreamUnhealthyError` before any I/O; the ``http.client.dependency.health``
gauge reports 1 / 0.

Only the very first call to a probed downstream, in a thread without an event
loop, waits for the first result, at most `FIRST_RESULT_WAIT` seconds; an
async caller never waits (an unknown result lets the call through).
"""

from __future__ import annotations

import asyncio
import http.client
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from otel_integration import _forks as forks

PROBE_TIMEOUT = 2.0
FIRST_RESULT_WAIT = 0.5


def first_result_wait() -> float:
    """How long a call may wait for a probe's first result: never inside an event loop."""
    try:
        asyncio.get_running_loop()
        return 0.0
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
            return 0.0
        except RuntimeError:
            pass
    return FIRST_RESULT_WAIT


def check(url: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str | None]:
    """GET `url`: (healthy, reason when not)."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or "", parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", path, headers={"User-Agent": "otel-integration-probe"})
        response = connection.getresponse()
        response.read(64 * 1024)
        if 200 <= response.status < 400:
            return True, None
        return False, str(response.status)
    except (OSError, http.client.HTTPException) as exc:
        return False, type(exc).__name__
    finally:
        connection.close()


class Probe:
    """One downstream's probe: the cached result, refreshed in the background when older than ``ttl``."""

    def __init__(
        self,
        name: str,
        url: str,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        check: Callable[[str], tuple[bool, str | None]] = check,
    ) -> None:
        self.name = name
        self.url = url
        self.ttl = ttl
        self.healthy: bool | None = None  # None: no result yet
        self.error: str | None = None
        self.checked_at = 0.0
        self._clock = clock
        self._check = check
        self._lock = threading.Lock()
        self._running = False
        self._first = threading.Event()
        forks.reset_in_child(self)

    def refresh(self) -> None:
        """Start a background check if the cached result is older than the TTL."""
        with self._lock:
            if self._running:
                return
            if self.healthy is not None and self._clock() - self.checked_at < self.ttl:
                return
            self._running = True
        threading.Thread(target=self._run, name=f"otel-integration-probe:{self.name}", daemon=True).start()

    def status(self, wait: float = 0.0) -> bool | None:
        """The cached result, refreshed in the background when stale; None if unknown.

        ``wait``: seconds to wait for the very first result.
        """
        self.refresh()
        if self.healthy is None and wait > 0:
            self._first.wait(wait)
        return self.healthy

    def _run(self) -> None:
        try:
            healthy, error = self._check(self.url)
        except Exception as exc:  # noqa: BLE001 - a probe must never crash its thread silently
            healthy, error = False, type(exc).__name__
        with self._lock:
            self.healthy, self.error = healthy, error
            self.checked_at = self._clock()
            self._running = False
        self._first.set()

    def _after_fork(self) -> None:
        # A probe running in the parent at fork time never finishes in the child.
        self._lock = threading.Lock()
        self._running = False
        if self.healthy is None:
            self._first = threading.Event()
