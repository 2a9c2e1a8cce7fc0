"""The resilience transports: request ID, retries, circuit breaker, budget.

`ResilientTransport` and `AsyncResilientTransport` wrap any httpx transport
(the default `HTTPTransport`, a mount, a user's `MockTransport`) the way
httpx's own transports compose. The instrumentor wraps every client's
transports with them; they can also be used directly::

    client = httpx.Client(transport=ResilientTransport(httpx.HTTPTransport()))

One logical call (`client.send`) becomes one or more attempts:

1. The correlation ID is fixed for the call (the request's own valid
   X-Request-ID, else the current context's, else a new UUID4) and
   published with each attempt, so every attempt carries the same one.
2. The first attempt runs with no retry machinery at all: the happy path
   pays for a breaker check, a budget deposit and two context switches.
3. Only if it failed in a retryable way does the call enter
   `stamina.retry_context`, replaying that first failure as stamina's first
   attempt, so stamina owns the loop, its testing mode and its hooks.
4. The circuit breaker sits inside the loop: every attempt is admitted and
   recorded; an open breaker stops the loop.
5. After the last attempt the caller gets what httpx would have given: the
   last response or the last exception. Discarded responses are read and
   closed so their connections go back to the pool.

Per-request overrides go in ``request.extensions["otel_integration"]``, a
dict with any of ``retry`` (False disables retries), ``attempts`` and
``deadline`` (seconds).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import stamina

from otel_integration import policy
from otel_integration.errors import CircuitOpenError, qualified_name
from otel_integration.layer import ResilienceLayer
from otel_integration.propagation import get_request_id, new_request_id, valid_request_id
from otel_integration.tracing import AttemptInfo, current_attempt, record_rejected_call, redact_url_secrets

EXTENSION = "otel_integration"

_logger = logging.getLogger(__name__)


class _RetryableOutcome(Exception):
    """Carries a failed attempt's outcome through stamina's retry loop."""

    def __init__(self, response: httpx.Response | None, error: BaseException | None, reason: str) -> None:
        super().__init__(reason)
        self.response = response
        self.error = error
        self.reason = reason


class _Call:
    """One logical call: its settings and the decisions between attempts.

    Built on every request, so it is a plain slotted class that does the
    whole set-up in one place, and what only a failure needs (idempotency)
    is computed on demand.
    """

    __slots__ = (
        "layer", "request", "downstream", "attempts", "deadline",
        "replayable", "started", "retry_number", "first_attempt",
    )

    @classmethod
    def begin(cls, layer: ResilienceLayer, request: httpx.Request) -> _Call | None:
        """The call, or None (the request goes out unprotected) if our own code fails.

        A bug or a bad per-request override in the distro must never fail the
        user's request: it is logged once and the call bypasses the layer.
        """
        try:
            return cls(layer, request)
        except Exception:
            if not layer.prepare_failure_logged:
                layer.prepare_failure_logged = True
                _logger.exception("otel-integration: could not set up retries for a request; sending it unprotected")
            return None

    def __init__(self, layer: ResilienceLayer, request: httpx.Request) -> None:
        self.layer = layer
        self.request = request
        # The correlation ID, fixed for every attempt: the request's own valid
        # one, else the current request's (server side), else a new one. The
        # propagator reads it from `current_attempt` while an attempt runs.
        header = layer.settings.request_id_header
        own = request.headers.get(header)
        request_id = (own is not None and valid_request_id(own)) or get_request_id() or new_request_id()
        request.headers[header] = request_id

        url = request.url
        downstream = self.downstream = layer.downstream(url.host, url.port or (443 if url.scheme == "https" else 80))
        settings = downstream.settings
        attempts = settings.retry_attempts
        self.deadline: float | None = settings.retry_deadline or None
        overrides: dict[str, Any] | None = request.extensions.get(EXTENSION)
        if overrides:
            attempts = max(1, int(overrides.get("attempts", attempts)))
            if overrides.get("retry") is False:
                attempts = 1
            if "deadline" in overrides:
                self.deadline = float(overrides["deadline"]) or None
        self.replayable = policy.is_replayable(request)
        self.attempts = attempts if self.replayable else 1
        self.started = time.monotonic()
        self.retry_number = 0
        self.first_attempt = AttemptInfo(
            0, layer.request_id_attribute, (request_id,), downstream.peer_service, not self.replayable
        )
        downstream.budget.record_call()
        if layer.before_send_hooks:
            layer.before_send(request, downstream)

    def idempotent(self) -> bool:
        return policy.is_idempotent(self.request)

    # --- per-attempt bookkeeping -------------------------------------------------

    def attempt_info(self, resend_count: int) -> AttemptInfo:
        if resend_count == 0:
            return self.first_attempt
        first = self.first_attempt
        return AttemptInfo(
            resend_count, first.request_id_attribute, first.request_id, first.peer_service, first.body_not_replayable
        )

    def rejected(self, error: CircuitOpenError, resend_count: int) -> CircuitOpenError:
        """Record a fast-failed attempt (span, metric) and return a fresh error."""
        error._request = self.request
        attributes = {**self.downstream.attributes, "http.request.method": self.request.method}
        self.layer.instruments.breaker_rejections.add(1, attributes)
        record_rejected_call(
            self.layer.tracer,
            method=self.request.method,
            host=self.downstream.host,
            port=self.downstream.port,
            url=redact_url_secrets(str(self.request.url)),
            error=error,
            attempt=self.attempt_info(resend_count),
        )
        return error

    # The breaker's verdict on an attempt, and whether its outcome is retried,
    # are decided here; the transports only call the (sync or async) breaker.

    def fails_breaker(self, response: httpx.Response) -> bool:
        return response.status_code in self.downstream.settings.breaker_failure_status_codes

    def retryable_response(self, response: httpx.Response) -> _RetryableOutcome | None:
        status = response.status_code
        if status in self.downstream.settings.retry_status_codes and self.attempts > 1 and self.idempotent():
            return _RetryableOutcome(response, None, str(status))
        return None

    def retryable_error(self, error: BaseException) -> _RetryableOutcome | None:
        if self.attempts > 1 and isinstance(error, Exception) and policy.retryable_error(error, self.idempotent()):
            return _RetryableOutcome(None, error, qualified_name(type(error)))
        return None

    # --- between attempts (called by stamina) ----------------------------------------

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - (time.monotonic() - self.started)

    def backoff(self, exc: Exception) -> bool | float:
        """stamina's backoff hook: False to stop, else the wait in seconds."""
        if not isinstance(exc, _RetryableOutcome):
            return False
        self.retry_number += 1
        if self.retry_number >= self.attempts and not stamina.is_testing():
            # stamina is about to stop anyway: spend no budget. (In testing
            # mode stamina decides the number of attempts itself.)
            return False
        if self.downstream.breaker.state() == "open":
            return False
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            return False
        if not self.downstream.budget.try_withdraw():
            self.layer.instruments.retry_budget_exhausted.add(1, self.downstream.attributes)
            return False
        settings = self.downstream.settings
        wait = None
        if exc.response is not None:
            wait = policy.retry_after_seconds(exc.response)
        if wait is None:
            wait = policy.exponential_backoff(
                self.retry_number,
                initial=settings.retry_initial_wait,
                maximum=settings.retry_max_wait,
                jitter=settings.retry_jitter,
            )
        wait = min(wait, settings.retry_max_wait)
        if remaining is not None:
            wait = min(wait, remaining)
        return max(0.0, wait)

    def retry_starting(self, reason: str) -> None:
        attributes = {
            **self.downstream.attributes,
            "http.request.method": self.request.method,
            "error.type": reason,
        }
        self.layer.instruments.retries.add(1, attributes)

    def retry_context(self) -> Any:
        settings = self.downstream.settings
        return stamina.retry_context(
            on=self.backoff,
            attempts=self.attempts,
            timeout=None,  # the deadline is enforced by `backoff`, which also clips waits
            wait_initial=settings.retry_initial_wait,
            wait_max=settings.retry_max_wait,
            wait_jitter=settings.retry_jitter,
        )


def _error_fails_breaker(error: BaseException) -> bool:
    """Transport errors are the downstream's fault; cancellation and bugs are not."""
    return isinstance(error, httpx.TransportError) and not isinstance(error, httpx.UnsupportedProtocol)


def _discard(response: httpx.Response) -> None:
    try:
        response.read()
    except httpx.HTTPError:
        pass
    finally:
        response.close()


async def _adiscard(response: httpx.Response) -> None:
    try:
        await response.aread()
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()


def _final(outcome: _RetryableOutcome) -> httpx.Response:
    if outcome.response is not None:
        return outcome.response
    assert outcome.error is not None
    raise outcome.error


class ResilientTransport(httpx.BaseTransport):
    """Retries, circuit breaker and request ID around a sync transport."""

    def __init__(self, transport: httpx.BaseTransport, layer: ResilienceLayer) -> None:
        self.transport = transport
        self.layer = layer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = _Call.begin(self.layer, request)
        if call is None:
            return self.transport.handle_request(request)
        first = self._attempt(call, 0)
        if isinstance(first, httpx.Response):
            return first
        return self._retry(call, first)

    def _attempt(self, call: _Call, resend_count: int) -> httpx.Response | _RetryableOutcome:
        try:
            call.downstream.breaker.admit()
        except CircuitOpenError as error:
            raise call.rejected(error, resend_count) from None
        breaker = call.downstream.breaker
        attempt_token = current_attempt.set(call.attempt_info(resend_count))
        try:
            response = self.transport.handle_request(call.request)
        except BaseException as error:
            if _error_fails_breaker(error):
                breaker.record_failure()
            else:
                breaker.release()
            outcome = call.retryable_error(error)
            if outcome is None:
                raise
            return outcome
        finally:
            current_attempt.reset(attempt_token)
        if call.fails_breaker(response):
            breaker.record_failure()
        else:
            breaker.record_success()
        return call.retryable_response(response) or response

    def _retry(self, call: _Call, first: _RetryableOutcome) -> httpx.Response:
        last = first
        try:
            for attempt in call.retry_context():
                with attempt:
                    if attempt.num == 1:
                        raise first  # replay: the first attempt already ran
                    if last.response is not None:
                        _discard(last.response)
                    call.retry_starting(last.reason)
                    outcome = self._attempt(call, attempt.num - 1)
                    if isinstance(outcome, httpx.Response):
                        return outcome
                    last = outcome
                    raise outcome
        except _RetryableOutcome as final:
            return _final(final)
        except BaseException:
            # Cancelled while waiting, or a final error: the held response
            # must not keep its connection out of the pool.
            if last.response is not None and not last.response.is_closed:
                last.response.close()
            raise
        raise AssertionError("unreachable: stamina either returns or raises")

    def close(self) -> None:
        self.transport.close()


class AsyncResilientTransport(httpx.AsyncBaseTransport):
    """Retries, circuit breaker and request ID around an async transport."""

    def __init__(self, transport: httpx.AsyncBaseTransport, layer: ResilienceLayer) -> None:
        self.transport = transport
        self.layer = layer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = _Call.begin(self.layer, request)
        if call is None:
            return await self.transport.handle_async_request(request)
        first = await self._attempt(call, 0)
        if isinstance(first, httpx.Response):
            return first
        return await self._retry(call, first)

    async def _attempt(self, call: _Call, resend_count: int) -> httpx.Response | _RetryableOutcome:
        try:
            await call.downstream.breaker.aadmit()
        except CircuitOpenError as error:
            raise call.rejected(error, resend_count) from None
        breaker = call.downstream.breaker
        attempt_token = current_attempt.set(call.attempt_info(resend_count))
        try:
            response = await self.transport.handle_async_request(call.request)
        except BaseException as error:
            # The async breaker calls may reach Redis.
            if _error_fails_breaker(error):
                await breaker.arecord_failure()
            else:
                await breaker.arelease()
            outcome = call.retryable_error(error)
            if outcome is None:
                raise
            return outcome
        finally:
            current_attempt.reset(attempt_token)
        if call.fails_breaker(response):
            await breaker.arecord_failure()
        else:
            await breaker.arecord_success()
        return call.retryable_response(response) or response

    async def _retry(self, call: _Call, first: _RetryableOutcome) -> httpx.Response:
        last = first
        try:
            async for attempt in call.retry_context():
                with attempt:
                    if attempt.num == 1:
                        raise first
                    if last.response is not None:
                        await _adiscard(last.response)
                    call.retry_starting(last.reason)
                    outcome = await self._attempt(call, attempt.num - 1)
                    if isinstance(outcome, httpx.Response):
                        return outcome
                    last = outcome
                    raise outcome
        except _RetryableOutcome as final:
            return _final(final)
        except BaseException:
            if last.response is not None and not last.response.is_closed:
                await last.response.aclose()
            raise
        raise AssertionError("unreachable: stamina either returns or raises")

    async def aclose(self) -> None:
        await self.transport.aclose()
