"""Structured error types for integration calls.

Every error is an `IntegrationError` *and* the `httpx` exception that code
written against plain httpx already catches, so adopting the distro never
breaks an existing ``except httpx.RequestError`` block.

Messages name the downstream (``host:port`` or its logical name) and never
contain URLs with credentials, headers or bodies.
"""

from __future__ import annotations

import datetime as dt

import httpx


class IntegrationError(Exception):
    """Base class of every error raised by otel_integration's HTTP layer."""

    downstream: str

    def __init__(self, message: str, *, downstream: str, request: httpx.Request | None = None) -> None:
        # httpx's RequestError takes (message, request=...); plain Exception takes args.
        super().__init__(message)
        self.downstream = downstream
        if request is not None:
            self._request = request


class CircuitOpenError(IntegrationError, httpx.TransportError):
    """The downstream's circuit breaker is open: the call failed fast, no I/O."""

    def __init__(
        self,
        *,
        downstream: str,
        retry_at: float,
        request: httpx.Request | None = None,
    ) -> None:
        when = dt.datetime.fromtimestamp(retry_at, tz=dt.timezone.utc).isoformat(timespec="seconds")
        super().__init__(
            f"circuit breaker for {downstream} is open; calls fail fast until {when}",
            downstream=downstream,
            request=request,
        )
        self.retry_at = retry_at


class DownstreamUnhealthyError(IntegrationError, httpx.TransportError):
    """The downstream's active health probe is failing: the call failed fast."""

    def __init__(self, *, downstream: str, request: httpx.Request | None = None) -> None:
        super().__init__(
            f"health probe of {downstream} is failing; calls fail fast until it recovers",
            downstream=downstream,
            request=request,
        )


def qualified_name(exc_type: type[BaseException]) -> str:
    """`error.type` value for an exception: its fully qualified class name."""
    module = exc_type.__module__
    if module == "builtins":
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"
