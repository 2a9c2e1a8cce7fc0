"""Structured error types for integration calls (the seed's taxonomy, on httpx's classes).

Every error is an `IntegrationError` *and* the `httpx` exception that code
written against plain httpx already catches, so adopting the distro never
breaks an existing ``except httpx.ConnectError`` block::

    IntegrationError                         downstream, attempts, request_id, trace_id, status
      ServiceUnavailableError                the downstream cannot serve the call now
        CircuitOpenError                     (httpx.TransportError) refused by the breaker, no I/O
        DownstreamUnhealthyError             (httpx.TransportError) refused by the health probe, no I/O
        ConnectError, ReadError, WriteError, CloseError, RemoteProtocolError, ProxyError
                                             the httpx class of the same name, after every attempt
        UnavailableStatusError               raise_for_status() on 429, 502, 503, 504
      IntegrationTimeoutError                ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout
      AuthenticationError                    raise_for_status() on 401, 403
      ValidationError                        (ValueError) a response body that is not what the caller expects
      HTTPStatusError                        raise_for_status() on any other status (and the base of the two above)
      LocalProtocolError, UnsupportedProtocol the caller's own request was wrong; nothing was sent

The timeout class is ``IntegrationTimeoutError``, not ``TimeoutError``: a
name that shadowed the builtin would make ``except TimeoutError`` in a module
that imports ours catch something else, and subclassing the builtin (an
`OSError`) would make existing ``except OSError`` blocks start catching httpx
timeouts.

The httpx twins keep httpx's class names, so ``error.type`` on spans and
metrics (`error_type`) reads the same whether or not an error was converted.
Messages name the downstream and never contain a secret: a URL in them is
redacted as it is on spans. Every error can be pickled (a process-pool worker
may raise one); the request and response it was raised for stay behind.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

__all__ = [
    "AuthenticationError",
    "CircuitOpenError",
    "DownstreamUnhealthyError",
    "HTTPStatusError",
    "IntegrationError",
    "IntegrationTimeoutError",
    "ServiceUnavailableError",
    "UnavailableStatusError",
    "ValidationError",
    "error_type",
]

# raise_for_status(): the statuses that mean "not now" (the retried ones by default) and "not you".
UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
AUTHENTICATION_STATUSES = frozenset({401, 403})


def error_type(exc_type: type[BaseException]) -> str:
    """The ``error.type`` of an exception on spans and metrics: its class name (``ConnectError``).

    The form the upstream httpx instrumentation writes on its spans, so one
    failure reads the same on spans, metrics, alerts and the dashboard.
    """
    return exc_type.__qualname__


class IntegrationError(Exception):
    """Base class of every error raised by otel_integration's HTTP layer.

    ``downstream``: the logical name (``OTEL_INTEGRATION_SERVICES``) or
    ``host:port``; ``attempts``: attempts sent (0 when refused before sending);
    ``request_id`` and ``trace_id`` (32 hex digits) of the call, when known;
    ``status``: the last HTTP status the downstream answered, if any.
    """

    downstream: str
    attempts: int | None
    request_id: str | None
    trace_id: str | None
    status: int | None
    _request: httpx.Request | None  # as on httpx.HTTPError, which every subclass also is

    def __init__(
        self,
        message: str,
        *,
        downstream: str,
        attempts: int | None = None,
        request_id: str | None = None,
        trace_id: str | None = None,
        status: int | None = None,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        if isinstance(self, httpx.HTTPStatusError):
            assert request is not None and response is not None
            super().__init__(message, request=request, response=response)  # type: ignore[call-arg]
        else:
            # httpx.RequestError takes (message, request=...); ValueError and Exception take args.
            super().__init__(message)
        self.downstream = downstream
        self.attempts = attempts
        self.request_id = request_id
        self.trace_id = trace_id
        self.status = status
        self._request = request

    # As httpx.HTTPError's, so the seed's categories that are not httpx classes have it too.
    @property
    def request(self) -> httpx.Request:
        if self._request is None:
            raise RuntimeError("The .request property has not been set.")
        return self._request

    @request.setter
    def request(self, request: httpx.Request) -> None:
        self._request = request

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles as cls(*args); ours take keyword arguments, and the request
        # (its headers may hold credentials) and the response must not travel.
        state = {k: v for k, v in vars(self).items() if k not in ("_request", "response")}
        return (_rebuild, (type(self), self.args, state))


def _rebuild(cls: type[IntegrationError], args: tuple[Any, ...], state: dict[str, Any]) -> IntegrationError:
    error = cls.__new__(cls, *args)
    Exception.__init__(error, *args)
    vars(error).update(state, _request=None)
    if issubclass(cls, httpx.HTTPStatusError):
        vars(error)["response"] = None
    return error


def _when(epoch: float) -> str:
    try:
        return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{epoch:.0f} (epoch seconds)"


# --- the seed's categories ------------------------------------------------------------------------


class ServiceUnavailableError(IntegrationError):
    """The downstream cannot serve the call now: refused, unreachable, dropped, or said so (429/502/503/504)."""


class IntegrationTimeoutError(IntegrationError):
    """An attempt timed out (connect, read, write, or waiting for a pooled connection)."""


class HTTPStatusError(IntegrationError, httpx.HTTPStatusError):
    """``raise_for_status()`` on a status that is neither unavailability nor authentication."""


class AuthenticationError(HTTPStatusError):
    """``raise_for_status()`` on 401 or 403: the credentials were missing, wrong or not enough."""


class UnavailableStatusError(ServiceUnavailableError, HTTPStatusError):
    """``raise_for_status()`` on 429, 502, 503 or 504."""


class ValidationError(IntegrationError, ValueError):
    """A response body is not what the caller's schema expects (`otel_integration.validate`).

    ``method``, ``path``: the request's (the path without its query); ``fields``:
    ``(location, expected, got)`` for every failing field, ``got`` hidden for
    fields whose names look secret.
    """

    method: str
    path: str
    fields: tuple[tuple[str, str, str], ...]


# --- fail fast (no I/O) ---------------------------------------------------------------------------


class CircuitOpenError(ServiceUnavailableError, httpx.TransportError):
    """The downstream's circuit breaker refused the call: it failed fast, with no I/O.

    ``retry_at``: when the breaker lets a trial call through (epoch seconds), or
    None while it is half-open with its trial calls in flight.
    """

    def __init__(self, *, downstream: str, retry_at: float | None, request: httpx.Request | None = None) -> None:
        if retry_at is None:
            message = f"circuit breaker for {downstream} is half-open: trial calls are in flight; calls fail fast until one succeeds"
        else:
            message = f"circuit breaker for {downstream} is open; calls fail fast until {_when(retry_at)}"
        super().__init__(message, downstream=downstream, attempts=0, request=request)
        self.retry_at = retry_at


class DownstreamUnhealthyError(ServiceUnavailableError, httpx.TransportError):
    """The downstream's active health probe is failing: the call failed fast, with no I/O."""

    def __init__(self, *, downstream: str, request: httpx.Request | None = None) -> None:
        super().__init__(
            f"health probe of {downstream} is failing; calls fail fast until it recovers",
            downstream=downstream,
            attempts=0,
            request=request,
        )


# --- the httpx twins: raised when a call finally fails with the httpx class of the same name --------


class ConnectError(ServiceUnavailableError, httpx.ConnectError):
    """Could not connect (refused, unreachable, TLS)."""


class ReadError(ServiceUnavailableError, httpx.ReadError):
    """The connection failed while reading the response."""


class WriteError(ServiceUnavailableError, httpx.WriteError):
    """The connection failed while sending the request."""


class CloseError(ServiceUnavailableError, httpx.CloseError):
    """The connection failed while closing."""


class RemoteProtocolError(ServiceUnavailableError, httpx.RemoteProtocolError):
    """The downstream broke HTTP (e.g. closed the connection without a response)."""


class ProxyError(ServiceUnavailableError, httpx.ProxyError):
    """The proxy refused or failed the call."""


class ConnectTimeout(IntegrationTimeoutError, httpx.ConnectTimeout):
    """Connecting took longer than the connect timeout."""


class ReadTimeout(IntegrationTimeoutError, httpx.ReadTimeout):
    """The response took longer than the read timeout."""


class WriteTimeout(IntegrationTimeoutError, httpx.WriteTimeout):
    """Sending the request took longer than the write timeout."""


class PoolTimeout(IntegrationTimeoutError, httpx.PoolTimeout):
    """No pooled connection became free within the pool timeout (the caller's own pool is full)."""


class LocalProtocolError(IntegrationError, httpx.LocalProtocolError):
    """The request itself broke HTTP (e.g. a bad header): nothing was sent."""


class UnsupportedProtocol(IntegrationError, httpx.UnsupportedProtocol):
    """The URL's scheme has no transport."""


_TWINS: dict[type[BaseException], type[IntegrationError]] = {
    httpx.ConnectError: ConnectError,
    httpx.ReadError: ReadError,
    httpx.WriteError: WriteError,
    httpx.CloseError: CloseError,
    httpx.RemoteProtocolError: RemoteProtocolError,
    httpx.ProxyError: ProxyError,
    httpx.ConnectTimeout: ConnectTimeout,
    httpx.ReadTimeout: ReadTimeout,
    httpx.WriteTimeout: WriteTimeout,
    httpx.PoolTimeout: PoolTimeout,
    httpx.LocalProtocolError: LocalProtocolError,
    httpx.UnsupportedProtocol: UnsupportedProtocol,
}


def twin_of(error_class: type[BaseException]) -> type[IntegrationError] | None:
    """Our class for an httpx transport error class (or a subclass of one), else None."""
    for klass in error_class.__mro__:
        twin = _TWINS.get(klass)
        if twin is not None:
            return twin
    return None


def status_error_class(status: int) -> type[HTTPStatusError]:
    """The class `raise_for_status` raises for ``status``."""
    if status in AUTHENTICATION_STATUSES:
        return AuthenticationError
    if status in UNAVAILABLE_STATUSES:
        return UnavailableStatusError
    return HTTPStatusError
