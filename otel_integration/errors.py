"""Structured error types for integration calls.

Every error is an `IntegrationError` *and* the `httpx` exception that code
written against plain httpx already catches, so adopting the distro never
breaks an existing ``except httpx.RequestError`` block.

Messages name the downstream (``host:port`` or its logical name) and never
contain URLs, headers or bodies. Every error can be pickled (a process-pool
worker may raise one); the request it was raised for is not pickled with it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

__all__ = ["CircuitOpenError", "DownstreamUnhealthyError", "IntegrationError", "error_type"]


def error_type(exc_type: type[BaseException]) -> str:
    """The ``error.type`` of an exception on spans and metrics: its class name (``ConnectError``).

    The form the upstream httpx instrumentation writes on its spans, so one
    failure reads the same on spans, metrics, alerts and the dashboard.
    """
    return exc_type.__qualname__


class IntegrationError(Exception):
    """Base class of every error raised by otel_integration's HTTP layer."""

    downstream: str
    _request: httpx.Request | None  # as on httpx.RequestError, which every subclass also is

    def __init__(self, message: str, *, downstream: str, request: httpx.Request | None = None) -> None:
        # httpx's RequestError takes (message, request=...); plain Exception takes args.
        super().__init__(message)
        self.downstream = downstream
        if request is not None:
            self._request = request

    def _state(self) -> dict[str, Any]:
        return {"downstream": self.downstream}

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles as cls(*args); ours take keyword arguments (and a request that stays behind).
        return (_rebuild, (type(self), self._state()))


def _rebuild(cls: type[IntegrationError], state: dict[str, Any]) -> IntegrationError:
    return cls(**state)


def _when(epoch: float) -> str:
    try:
        return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{epoch:.0f} (epoch seconds)"


class CircuitOpenError(IntegrationError, httpx.TransportError):
    """The downstream's circuit breaker refused the call: it failed fast, with no I/O.

    ``retry_at``: when the breaker lets a trial call through (epoch seconds), or
    None while it is half-open with its trial calls in flight.
    """

    def __init__(self, *, downstream: str, retry_at: float | None, request: httpx.Request | None = None) -> None:
        if retry_at is None:
            message = f"circuit breaker for {downstream} is half-open: trial calls are in flight; calls fail fast until one succeeds"
        else:
            message = f"circuit breaker for {downstream} is open; calls fail fast until {_when(retry_at)}"
        super().__init__(message, downstream=downstream, request=request)
        self.retry_at = retry_at

    def _state(self) -> dict[str, Any]:
        return {"downstream": self.downstream, "retry_at": self.retry_at}


class DownstreamUnhealthyError(IntegrationError, httpx.TransportError):
    """The downstream's active health probe is failing: the call failed fast, with no I/O."""

    def __init__(self, *, downstream: str, request: httpx.Request | None = None) -> None:
        super().__init__(
            f"health probe of {downstream} is failing; calls fail fast until it recovers",
            downstream=downstream,
            request=request,
        )
