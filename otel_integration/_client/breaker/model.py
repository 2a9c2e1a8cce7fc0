"""The circuit breaker of one downstream as a pure state machine: no clock, no lock, no I/O.

The states and their transitions are purgatory's (`purgatory.domain.model`),
driven through its `Context`:

    closed --threshold consecutive failures--> open --open_seconds later--> half-open
    half-open --trial succeeds--> closed        half-open --trial fails--> open

What this model adds, and the layers above rely on:

- **Permits.** `admit` hands out a `Permit` naming the breaker's *generation*
  (every transition starts a new one) and whether it is a half-open trial. A
  verdict that comes with a permit of an older generation is ignored: a late
  failure of a call admitted while closed cannot reopen a half-open breaker,
  and a late success cannot close it before the real trial answers.
- **A trial limit.** At most ``half_open_calls`` trials are in flight. A
  trial's slot is freed by its own verdict or by `Outcome.NONE` (the call
  was cancelled), never because it took long: a slow trial is still the
  trial.
- **The caller's clock.** Every method takes ``now``; purgatory's
  `OpenedState` would read ``time.time()``.

Times are whatever clock the caller uses (monotonic seconds in this package).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from purgatory.domain.model import (
    CLOSED,
    HALF_OPENED,
    OPENED,
    ClosedState,
    Context,
    HalfOpenedState,
    OpenedState,
    State,
)

__all__ = ["BreakerModel", "Outcome", "Permit", "Rejection", "STATE_NAMES"]

# purgatory's state names -> the names of our metrics, health endpoint and logs.
STATE_NAMES: dict[str, str] = {CLOSED: "closed", OPENED: "open", HALF_OPENED: "half_open"}


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    NONE = "none"  # no verdict (cancelled, our own error): frees the permit, counts nothing


@dataclass(frozen=True, slots=True)
class Permit:
    """What `BreakerModel.admit` gave one call; handed back with its verdict."""

    generation: int
    trial: bool


@dataclass(frozen=True, slots=True)
class Rejection:
    """A call refused by the breaker.

    ``retry_at``: when an open breaker lets a trial through (same clock as
    ``now``); None while half-open with every trial slot taken (it depends on
    the trials' verdicts).
    """

    retry_at: float | None


class _Context(Context):
    """purgatory's `Context`, with the caller's time and without its event messages."""

    def __init__(self, name: str, threshold: int, ttl: float) -> None:
        super().__init__(name, threshold, ttl)
        self.now = 0.0
        self.transitions: list[tuple[str, str]] = []

    def set_state(self, state: State) -> None:
        old = self._state
        if isinstance(state, OpenedState):
            state.opened_at = self.now  # purgatory stamped time.time()
            state.failure_count = old.failure_count or 0  # the count that opened it, for reports
        self._state = state
        self.transitions.append((STATE_NAMES[old.name], STATE_NAMES[state.name]))

    # purgatory queues these for its message bus; state is persisted by our storage instead.
    def mark_failure(self, failure_count: int) -> None:
        pass

    def recover_failure(self) -> None:
        pass


_FAILURE = RuntimeError("failure recorded by the caller")  # what purgatory's handle_exception wants


class BreakerModel:
    """One downstream's breaker. Not thread-safe: the caller serialises access."""

    __slots__ = ("open_seconds", "half_open_calls", "generation", "trials", "closed_permit", "_ctx")

    def __init__(self, name: str, *, threshold: int, open_seconds: float, half_open_calls: int) -> None:
        self.open_seconds = open_seconds
        self.half_open_calls = half_open_calls
        self.generation = 0
        self.trials = 0  # half-open trials in flight
        # Permits are immutable: every call admitted while closed shares one per generation.
        self.closed_permit = Permit(0, trial=False)
        self._ctx = _Context(name, threshold, open_seconds)

    # --- reading --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._ctx._state.name == CLOSED

    @property
    def state(self) -> str:
        """The stored state: "closed", "open" or "half_open" (see `state_at` for time-based changes)."""
        return STATE_NAMES[self._ctx._state.name]

    def state_at(self, now: float) -> str:
        """The state as a caller would meet it at ``now``: an elapsed open window reads half_open."""
        state = self.state
        if state == "open" and now >= self.retry_at():
            return "half_open"
        return state

    @property
    def failures(self) -> int:
        return self._ctx._state.failure_count or 0

    @property
    def opened_at(self) -> float | None:
        return self._ctx._state.opened_at

    def retry_at(self) -> float:
        """When an open breaker lets its first trial through."""
        opened_at = self._ctx._state.opened_at
        return (opened_at if opened_at is not None else 0.0) + self.open_seconds

    def quiet(self) -> bool:
        """Closed with no failure counted: a success changes nothing (the lock-free fast path)."""
        state = self._ctx._state
        return state.name == CLOSED and not state.failure_count

    # --- the steps ---------------------------------------------------------------------------

    def admit(self, now: float) -> Permit | Rejection:
        ctx = self._ctx
        name = ctx._state.name
        if name == CLOSED:
            return self.closed_permit
        if name == OPENED:
            retry_at = self.retry_at()
            if now < retry_at:
                return Rejection(retry_at)
            self._transition(now, lambda: ctx.set_state(HalfOpenedState()))
        if self.trials < self.half_open_calls:
            self.trials += 1
            return Permit(self.generation, trial=True)
        return Rejection(None)

    def settle(self, permit: Permit, outcome: Outcome, now: float) -> None:
        """The verdict on an admitted call. Stale permits (an older generation) change nothing."""
        if permit.generation != self.generation:
            return
        ctx = self._ctx
        if permit.trial:
            self.trials = max(0, self.trials - 1)
        if outcome is Outcome.NONE or ctx._state.name == OPENED:
            return
        if outcome is Outcome.SUCCESS:
            if not self.quiet():
                self._transition(now, ctx.handle_end_request)  # closed: reset the count; half-open: close
        else:
            self._transition(now, lambda: ctx.handle_exception(_FAILURE))  # count / open; half-open: reopen

    def force(self, state: str, *, failures: int, opened_at: float | None, now: float) -> None:
        """Adopt a state decided elsewhere (shared storage): a new generation if it changed anything."""
        ctx = self._ctx
        if state == self.state and failures == self.failures and (state != "open" or opened_at == self.opened_at):
            return
        if state == "open":
            ctx.now = opened_at if opened_at is not None else now
            target: State = OpenedState(ctx.name)
        elif state == "half_open":
            target = HalfOpenedState()
        else:
            target = ClosedState()
        if STATE_NAMES[ctx._state.name] != state:
            ctx.set_state(target)
            self._new_generation()
        ctx._state.failure_count = failures

    def take_transitions(self) -> list[tuple[str, str]]:
        """The (old, new) transitions since the last call, oldest first."""
        transitions = self._ctx.transitions
        if transitions:
            self._ctx.transitions = []
        return transitions

    def _transition(self, now: float, step: Callable[[], None]) -> None:
        ctx = self._ctx
        before = ctx._state
        ctx.now = now
        step()
        if ctx._state is not before:
            self._new_generation()

    def _new_generation(self) -> None:
        self.generation += 1
        self.trials = 0
        self.closed_permit = Permit(self.generation, trial=False)
