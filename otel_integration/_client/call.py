"""One logical call, decided without I/O: the core the two transports share.

A transport (`transport.py`, async; `_sync_transport.py`, generated from it)
does only the I/O. Everything else is asked here, in this order::

    call = Call.begin(layer, request)      # None: our own set-up failed; send it unprotected
    call.admit()                           # health probe, breaker: None, or a recorded fail-fast error to raise
    call.start()                           # an attempt: the span processor and propagator see it
    ... the inner transport sends it ...
    call.answered(response) / call.failed(error)  -> None: final (the response is the answer, the
                                              error is raised); else the outcome to retry
    stamina's loop: call.backoff(outcome)   -> seconds to wait, or False: stop (budget, deadline, ...)
    call.readmit(outcome)                  -> False: a retry refused after the wait (breaker opened,
                                              deadline passed); the last outcome stands
    call.respond(response)                 -> the final response, handed to the caller
    call.finish(outcome)                   -> the last outcome's response, or raises its error outside
                                              any except (its structured twin: `structured.py`)

Decisions, each in one place below:

- The verdict on every attempt goes to the breaker with the permit it was
  admitted with; the caller's own errors (`policy.fails_downstream`) and
  cancellation count nothing.
- A retry happens only if the attempts, the budget and the deadline allow it
  *and* the wait ends before the deadline. A ``Retry-After`` longer than
  ``RETRY_MAX_WAIT`` or than what is left of the deadline means no retry: the
  caller gets the response, rather than a retry earlier than the server asked.
- Whatever happens between attempts (the breaker opening, the probe failing,
  the deadline passing), the caller gets the last attempt's outcome, and a
  retry that was not made is not counted.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

import httpx
import stamina

from otel_integration._client import policy, retry_log, structured
from otel_integration._client.breaker import Outcome, Permit
from otel_integration._client.downstreams import address
from otel_integration._client.probes import first_result_wait
from otel_integration._client.layer import ResilienceLayer
from otel_integration._client.tracing import AttemptInfo, current_attempt, record_rejected_call
from otel_integration._propagation import get_request_id, new_request_id, valid_request_id
from otel_integration.errors import CircuitOpenError, DownstreamUnhealthyError, IntegrationError, error_type

EXTENSION = "otel_integration"
# What a request carries when neither its client nor its caller set a timeout.
_HTTPX_DEFAULT_TIMEOUT = httpx.Timeout(5.0).as_dict()
_MAX_ATTEMPTS = 100
_MAX_DEADLINE = 86400.0

_logger = logging.getLogger("otel_integration.retries")  # the retry log's logger (`retry_log`)


def _stop(exc: Exception) -> bool:
    """The backoff hook of a call that is gone: no retry."""
    return False


class AttemptOutcome(Exception):
    """A retryable attempt's outcome on its way through stamina's retry loop; never reaches a caller.

    A final answer needs none: the transport hands the response to `Call.respond`.
    """

    __slots__ = ("response", "error", "reason", "downstream", "number", "final")

    def __init__(
        self,
        downstream: str,
        number: int,
        *,
        response: httpx.Response | None = None,
        error: BaseException | None = None,
        final: bool = False,
    ) -> None:
        super().__init__()
        self.downstream = downstream
        self.number = number
        self.final = final  # not to retry: the call's last error, never raised through stamina
        self.response = response
        self.error = error
        self.reason = str(response.status_code) if response is not None else error_type(type(error or Exception()))

    def __repr__(self) -> str:
        return f"AttemptOutcome({self.downstream} {self.reason}, attempt {self.number})"

    __str__ = __repr__


class Call:
    """One logical call (`client.send`): its settings, its attempts, the decisions between them."""

    __slots__ = (
        "layer", "request", "downstream", "attempts", "can_retry", "deadline_at", "replayable", "made",
        "retries", "withdrawn", "first_info", "measured", "request_id", "last_status", "_permit", "_started", "_elapsed", "_token", "_outcomes",
        "__weakref__",
    )

    @classmethod
    def begin(cls, layer: ResilienceLayer, request: httpx.Request, measured: bool = False) -> Call | None:
        """The call, or None if our own code failed: then the request goes out unprotected.

        A bug in the distro must never fail the user's request: it is logged
        once and the call bypasses the layer.
        """
        try:
            return cls(layer, request, measured)
        except Exception:
            if layer.log_once("begin"):
                _logger.exception("otel-integration: could not set up retries for a request; sending it unprotected")
            return None

    def __init__(self, layer: ResilienceLayer, request: httpx.Request, measured: bool = False) -> None:
        self.layer = layer
        self.request = request
        # The inner transport is one the upstream instrumentation measures (an
        # httpx.HTTPTransport): its failed attempts are ours to record.
        self.measured = measured
        settings = layer.settings
        # The correlation ID, fixed for every attempt. A header the caller set is
        # theirs: sent unchanged, and recorded only if valid. Otherwise the current
        # request's ID (server side), else a new one.
        header = layer.request_id_header
        own = header.find(request.headers)
        if own is not None:
            request_id = valid_request_id(own)
        else:
            request_id = get_request_id() or new_request_id()
            header.add(request.headers, request_id)
        self.request_id = request_id
        downstream = self.downstream = layer.downstreams.get(*address(request.url))
        settings = downstream.settings
        if settings.timeout and request.extensions.get("timeout") == _HTTPX_DEFAULT_TIMEOUT:
            # The caller set no timeout of their own: the configured one, for every attempt.
            request.extensions = {**request.extensions, "timeout": dict.fromkeys(_HTTPX_DEFAULT_TIMEOUT, settings.timeout)}
        attempts = settings.retry_attempts
        deadline = settings.retry_deadline
        retry = True
        overrides = request.extensions.get(EXTENSION)
        if overrides:
            retry, attempts, deadline = self._overrides(overrides, attempts, deadline)
        self.replayable = policy.is_replayable(request)
        # A body that cannot be sent twice, or retry=False, is never retried (stamina's testing mode included).
        self.can_retry = retry and self.replayable
        self.attempts = attempts if self.can_retry else 1
        self.deadline_at = layer.clock() + deadline if deadline else None
        self.made = 0  # attempts started
        self.retries = 0  # retries started
        self.withdrawn = False  # a budget token taken for the coming retry
        self.last_status: int | None = None  # of the last answered attempt
        self.first_info = AttemptInfo(
            0, layer.request_id_attribute, (request_id,) if request_id else None,
            downstream.peer_service, not self.replayable,
        )
        self._permit: Permit | None = None
        self._started = 0.0
        self._elapsed = 0.0
        self._token: Any = None
        self._outcomes: list[AttemptOutcome] = []  # raised through stamina: see `finish`
        downstream.budget.record_call()
        if layer.before_send_hooks:
            for hook in layer.before_send_hooks:
                hook(request, downstream)

    def _overrides(self, overrides: Any, attempts: int, deadline: float) -> tuple[bool, int, float]:
        """``extensions={"otel_integration": {...}}``; a bad value is ignored (one warning per process)."""
        try:
            if overrides.get("retry") is False:
                return False, 1, deadline
            if "attempts" in overrides:
                value = overrides["attempts"]
                if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_ATTEMPTS):
                    raise ValueError(f"attempts={value!r} (expected an integer from 1 to {_MAX_ATTEMPTS})")
                attempts = value
            if "deadline" in overrides:
                value = overrides["deadline"]
                if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= _MAX_DEADLINE):
                    raise ValueError(f"deadline={value!r} (expected seconds from 0 to {_MAX_DEADLINE:g})")
                deadline = float(value)
        except (ValueError, AttributeError, TypeError) as error:
            if self.layer.log_once("overrides"):
                _logger.warning("otel-integration: ignoring a bad per-request override %s: %s", EXTENSION, error)
        return True, attempts, deadline

    # --- admission ------------------------------------------------------------------------------

    def admit(self) -> IntegrationError | None:
        """Admit the first attempt; else the fail-fast error to raise (its span and metric recorded)."""
        error = self._gate()
        return None if error is None else self._rejected(error)

    def readmit(self, last: AttemptOutcome) -> bool:
        """Admit a retry of `last` after its wait; False (nothing recorded) if it must not happen now."""
        refused = self.deadline_at is not None and self.layer.clock() >= self.deadline_at
        if not refused and self._gate() is None:
            self.retries += 1
            self.layer.instruments.retries.add(
                1,
                {**self.downstream.attributes, "http.request.method": self.request.method, "error.type": last.reason},
            )
            return True
        if self.withdrawn:
            self.downstream.budget.refund()
            self.withdrawn = False
        return False

    def _gate(self) -> IntegrationError | None:
        """The admission steps, in order: the health probe, then the breaker. Sets the permit."""
        downstream = self.downstream
        probe = downstream.probe
        if probe is not None:
            if probe.status(wait=first_result_wait()) is False:
                return DownstreamUnhealthyError(downstream=downstream.key, request=self.request)
        try:
            self._permit = downstream.breaker.admit()
        except CircuitOpenError as error:
            error._request = self.request
            return error
        return None

    def _rejected(self, error: IntegrationError) -> IntegrationError:
        error.attempts, error.request_id, error.trace_id = self.made, self.request_id, structured.current_trace_id()
        error.status = self.last_status
        attributes = {**self.downstream.attributes, "http.request.method": self.request.method}
        if isinstance(error, CircuitOpenError):
            self.layer.instruments.breaker_rejections.add(1, attributes)
        record_rejected_call(
            self.layer.tracer,
            method=self.request.method,
            host=self.downstream.host,
            port=self.downstream.port,
            url=str(self.request.url),  # redacted on export, with every span
            error=error,
            attempt=self._info(),
        )
        return error

    # --- one attempt --------------------------------------------------------------------------------

    def _info(self) -> AttemptInfo:
        if self.made <= 1:
            return self.first_info
        first = self.first_info
        return AttemptInfo(
            self.made - 1, first.request_id_attribute, first.request_id, first.peer_service, first.body_not_replayable
        )

    def start(self) -> None:
        """An admitted attempt is about to be sent."""
        self.made += 1
        self._token = current_attempt.set(self._info())
        self._started = time.perf_counter()

    def answered(self, response: httpx.Response) -> AttemptOutcome | None:
        """The attempt got a response: None if it is the call's answer, else its outcome to retry."""
        self.last_status = response.status_code
        self._end(
            Outcome.FAILURE if response.status_code in self.downstream.settings.breaker_failure_status_codes
            else Outcome.SUCCESS,
            None if response.status_code < 400 else str(response.status_code),
        )
        if (
            response.status_code in self.downstream.settings.retry_status_codes
            and self.made < self.attempts_allowed()
            and policy.is_idempotent(self.request)
        ):
            return self._outcome(AttemptOutcome(self.downstream.key, self.made, response=response))
        return None

    def failed(self, error: BaseException) -> AttemptOutcome | None:
        """The attempt raised: its outcome if it may be retried, else None (re-raise it as is)."""
        try:
            self._end(Outcome.FAILURE if policy.fails_downstream(error) else Outcome.NONE, error_type(type(error)))
            if self.measured:
                self.layer.failed_attempts.record(self.request, self._elapsed, error)
            if (
                isinstance(error, Exception)
                and self.made < self.attempts_allowed()
                and policy.retryable_error(error, policy.is_idempotent(self.request))
            ):
                return self._outcome(AttemptOutcome(self.downstream.key, self.made, error=error))
        except Exception:  # noqa: BLE001 - our bookkeeping must not replace the caller's error
            if self.layer.log_once("failed"):
                _logger.exception("otel-integration: could not record a failed attempt")
        return None

    def final(self, error: Exception) -> AttemptOutcome:
        """A retry's final error (`failed` said None), to leave stamina's loop with; `finish` raises it."""
        return self._outcome(AttemptOutcome(self.downstream.key, self.made, error=error, final=True))

    def _outcome(self, outcome: AttemptOutcome) -> AttemptOutcome:
        self._outcomes.append(outcome)
        return outcome

    def _end(self, verdict: Outcome, error: str | None) -> None:
        if self._token is not None:
            current_attempt.reset(self._token)
            self._token = None
        self._elapsed = time.perf_counter() - self._started
        permit, self._permit = self._permit, None
        if permit is not None:
            self.downstream.breaker.settle(permit, verdict)
        if self.layer.keeps_stats:
            self.downstream.stats.record(self._elapsed * 1000, error)

    def attempts_allowed(self) -> int:
        """In stamina's testing mode stamina decides the number of attempts (of a call that may retry)."""
        if self.can_retry and stamina.is_testing():
            return _MAX_ATTEMPTS
        return self.attempts

    # --- between attempts ----------------------------------------------------------------------------

    def retrying(self) -> Any:
        """stamina's retry loop for this call; every wait is `backoff`'s (stamina's own formula is unused)."""
        # stamina's retry context is a reference cycle (its wait is a bound method of
        # itself): what it holds lives until the garbage collector runs. It holds
        # this call (and its request) only weakly.
        backoff = weakref.WeakMethod(self.backoff)
        return stamina.retry_context(
            on=lambda exc: _stop(exc) if (hook := backoff()) is None else hook(exc),
            attempts=self.attempts,
            timeout=None,  # the deadline is ours: see backoff and readmit
            wait_initial=0.0,
            wait_max=0.0,
            wait_jitter=0.0,
        )

    def backoff(self, exc: Exception) -> bool | float:
        """stamina's backoff hook: False to stop, else the seconds to wait before the next attempt."""
        if not isinstance(exc, AttemptOutcome):
            return False
        downstream = self.downstream
        settings = downstream.settings
        if self.made >= self.attempts_allowed():
            return False
        if downstream.breaker.state() == "open":
            return False  # it would be refused: the last outcome stands
        retry_after = policy.retry_after_seconds(exc.response) if exc.response is not None else None
        if retry_after is not None:
            if retry_after > settings.retry_max_wait:
                return False  # the server asks for longer than we wait: not earlier than it asked
            wait = retry_after
        else:
            wait = policy.exponential_backoff(
                self.made, initial=settings.retry_initial_wait, maximum=settings.retry_max_wait,
                jitter=settings.retry_jitter,
            )
        if self.deadline_at is not None and self.layer.clock() + wait >= self.deadline_at:
            return False  # the retry would start at or after the deadline
        if not downstream.budget.try_withdraw():
            self.layer.instruments.retry_budget_exhausted.add(1, downstream.attributes)
            return False
        self.withdrawn = True
        retry_log.retrying(
            downstream, self.layer.clock(), method=self.request.method, reason=exc.reason, attempt=exc.number,
            attempts=self.attempts, wait=wait, request_id=self.first_info.request_id,
        )
        return wait

    # --- the end -----------------------------------------------------------------------------------------

    def respond(self, response: httpx.Response) -> httpx.Response:
        """The call's answer, as the caller gets it."""
        if self._outcomes:
            self._forget_outcomes()
        info: structured.CallInfo = {"downstream": self.downstream.key, "attempts": self.made, "request_id": self.request_id}
        response.extensions[structured.CALL_INFO] = info  # for raise_for_status
        return response

    def finish(self, outcome: AttemptOutcome) -> httpx.Response:
        """What the caller gets after the last retryable outcome: its response, or its error raised
        (outside any except block)."""
        response, error = outcome.response, outcome.error
        self._forget_outcomes()  # `outcome` among them: the callers' frames hold it
        if error is not None:
            try:
                raise self.raised(error)
            finally:
                # The raised error's traceback holds this frame: with structured errors off it is
                # `error` itself, and the two would be a cycle keeping the request alive.
                del error
        assert response is not None
        return self.respond(response)

    def _forget_outcomes(self) -> None:
        """Empty the outcomes stamina saw.

        They were raised inside its loop: their tracebacks reference the frames
        that hold them, a cycle that would keep the request (and its body and
        Authorization header) alive until the garbage collector runs.
        """
        for seen in self._outcomes:
            seen.response = seen.error = None
            seen.__traceback__ = None
        self._outcomes.clear()

    def raised(self, error: BaseException) -> BaseException:
        """What the caller gets for the call's last error: its structured twin (unless switched off)."""
        if not (self.downstream.settings.structured_errors and isinstance(error, httpx.TransportError)):
            return error
        try:
            return structured.transport_error(
                error, downstream=self.downstream.key, attempts=self.made, request_id=self.request_id,
                status=self.last_status, request=self.request, redactor=self.layer.redactor,
            )
        except Exception:  # noqa: BLE001 - our bug must not change what the caller gets
            if self.layer.log_once("structured"):
                _logger.exception("otel-integration: could not build a structured error; raising httpx's")
            return error
