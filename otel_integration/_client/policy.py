"""Retry policy: which outcomes are retried, which count against a downstream, how long to wait.

Pure functions of a request or an outcome; the call core (`call.py`) applies
them. Nothing here does I/O. The backoff formula is this module's alone:
stamina runs the retry loop, but every wait it sleeps is the one computed here.
"""

from __future__ import annotations

import email.utils
import random
import time

import httpx

from otel_integration.errors import CircuitOpenError, DownstreamUnhealthyError, IntegrationError

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
IDEMPOTENCY_KEY = "idempotency-key"
RETRY_AFTER_STATUSES = frozenset({429, 503})

# Failures that happen before any byte of the request was sent: safe to
# retry whatever the method.
NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures after the request may have reached the server: retried only
# when repeating the request is harmless.
MAYBE_SENT = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def is_idempotent(request: httpx.Request) -> bool:
    return request.method in IDEMPOTENT_METHODS or IDEMPOTENCY_KEY in request.headers


def is_replayable(request: httpx.Request) -> bool:
    """Whether the body can be sent again (not a one-shot generator)."""
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        return True
    # Multipart bodies re-render from their fields (files are rewound).
    return type(stream).__name__ == "MultipartStream"


def fails_downstream(error: BaseException) -> bool:
    """Whether an attempt's exception is the downstream's fault (a circuit breaker failure).

    Network errors and timeouts talking to it, and protocol violations on its
    side, are. The caller's own problems are not: a full connection pool
    (`PoolTimeout`), a request httpx refused to send (`LocalProtocolError`,
    `UnsupportedProtocol`), a proxy failing, cancellation, our fail-fast errors.
    """
    # The fail-fast refusals sent nothing; a structured twin (errors.ConnectError, ...) is its
    # httpx class and judged as that.
    if isinstance(error, (httpx.PoolTimeout, httpx.ProxyError, CircuitOpenError, DownstreamUnhealthyError)):
        return False
    return isinstance(error, (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError))


def retryable_error(error: BaseException, idempotent: bool) -> bool:
    if isinstance(error, IntegrationError):
        return False  # our own fail-fast errors: retrying would defeat them
    if isinstance(error, NOTHING_SENT):
        return True
    return idempotent and isinstance(error, MAYBE_SENT)


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """The server's Retry-After (delta seconds or HTTP date), if usable."""
    if response.status_code not in RETRY_AFTER_STATUSES:
        return None
    value = response.headers.get("retry-after")
    if value is None or len(value) > 64:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is True too
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def exponential_backoff(retry_number: int, *, initial: float, maximum: float, jitter: float) -> float:
    """The wait before retry number `retry_number` (1-based): initial * 2**(n-1) + uniform(0, jitter), at most `maximum`.

    The same formula as stamina's own, so its documentation applies.
    """
    try:
        wait = float(initial * (2 ** (retry_number - 1)))
    except OverflowError:
        wait = maximum
    if jitter:
        wait += random.uniform(0, jitter)  # noqa: S311 - jitter, not cryptography
    return float(min(maximum, wait))
