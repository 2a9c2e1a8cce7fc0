"""Telemetry recorded before a stop signal reaches the collector, within `FLUSH_BUDGET` seconds.

SIGTERM is how Docker, Kubernetes and systemd stop a service. Its default
action kills the process at once, so the SDK's exit handlers never flush
what is queued; uvicorn catches it, shuts down, then raises it again with the
handler it found, with the same result. Three hooks cover the servers and
scripts the distro runs under, without swallowing the signal or changing the
exit status the process would have had:

- `install_signal_flush` (by the configurator): when SIGTERM still has its
  default action, a handler that flushes the tracer, meter and logger
  providers, then restores the default action and raises SIGTERM again: the
  process dies of it as before (exit status 143, -15 for a parent). Plain
  scripts and Flask's development server get this one; so does uvicorn,
  which calls it when it re-raises the signal.
- `flush_after` around uvicorn's ``Server.shutdown`` (by the server
  instrumentor): covers uvicorn workers under gunicorn, which reset the
  signals to their defaults before uvicorn starts.
- normal exits (gunicorn's sync workers, SIGINT's KeyboardInterrupt, the end
  of a script) already run the SDK's exit handlers; `begin_exit` bounds them.

Exports made while exiting go through the export gate (`_export_gate.py`):
one try each, no retry, so a dead collector does not hold the exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from typing import Any

from otel_integration import _export_gate

_logger = logging.getLogger(__name__)

FLUSH_BUDGET = 5.0  # seconds for flushing everything after a stop signal


def flush(budget: float = FLUSH_BUDGET, *, exiting: bool = False) -> bool:
    """Export what the global providers hold; at most `budget` seconds. True when everything went.

    ``exiting``: the process ends right after, so every export gets one try (the export gate).
    """
    if exiting:
        _export_gate.begin_exit(budget)
    done = threading.Event()
    results: list[bool] = []

    def run() -> None:
        deadline = time.monotonic() + budget
        for provider in _providers():
            left = max(0.0, deadline - time.monotonic())
            try:
                results.append(bool(provider.force_flush(int(left * 1000))))
            except Exception:  # noqa: BLE001 - a provider failing must not stop the others
                results.append(False)
        done.set()

    # In a thread: a signal may interrupt the main thread inside a processor holding its lock.
    threading.Thread(target=run, name="otel-integration-flush", daemon=True).start()
    finished = done.wait(budget + 0.5)
    return finished and all(results)


def _providers() -> list[Any]:
    from opentelemetry import metrics, trace
    from opentelemetry._logs import get_logger_provider

    providers = [trace.get_tracer_provider(), metrics.get_meter_provider(), get_logger_provider()]
    return [p for p in providers if hasattr(p, "force_flush")]


def _flush_then_die(signum: int, frame: Any) -> None:
    flush(exiting=True)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # dies of the signal, as without us


def install_signal_flush() -> None:
    """Flush on SIGTERM when nothing else handles it (main thread only; the default action stays the end)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _flush_then_die)
    except (ValueError, OSError):  # pragma: no cover - an embedded interpreter without signals
        pass


def bound_the_exit() -> None:
    """Call once the SDK's providers exist: atexit runs handlers last-registered first, so this one
    runs before their shutdown and bounds the final exports."""
    atexit.register(_export_gate.begin_exit)


def flush_after(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A wrapt wrapper for an async shutdown method (uvicorn's ``Server.shutdown``): flush once it is done."""

    async def shutdown_then_flush() -> Any:
        try:
            return await wrapped(*args, **kwargs)
        finally:
            flush()

    return shutdown_then_flush()
