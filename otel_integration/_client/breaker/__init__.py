"""The circuit breaker of one downstream: the pure model behind a lock, with our clock.

`Breaker.admit()` returns a permit or raises a new `CircuitOpenError`;
`Breaker.settle(permit, outcome)` hands the verdict back. Neither does I/O,
whatever the storage: with Redis, a background thread (`shared.RedisSync`)
pushes this process's failures and transitions and adopts the other
processes' ones, so a slow or dead Redis is never on a call's path.

A closed breaker with no failure counted is the hot path: `admit` and a
successful `settle` read two attributes and take no lock. Reading the
generation before the state makes that race-free: a transition that lands in
between leaves the permit with an older generation, and its verdict is
ignored like any stale one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from otel_integration._client.breaker.model import BreakerModel, Outcome, Permit, Rejection
from otel_integration.errors import CircuitOpenError

if TYPE_CHECKING:
    from otel_integration._client.breaker.shared import RedisSync

__all__ = ["Breaker", "BreakerStatus", "Outcome", "Permit"]

_logger = logging.getLogger(__name__)

OnTransition = Callable[["Breaker", str, str], None]


@dataclass(frozen=True)
class BreakerStatus:
    """One breaker as the health endpoint shows it (times in epoch seconds)."""

    downstream: str
    state: str  # "closed" | "half_open" | "open"
    failure_count: int
    opened_at: float | None
    retry_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failure_count": self.failure_count,
            "opened_at": self.opened_at,
            "retry_at": self.retry_at,
        }


class _Pending:
    """What this process decided since its last push to shared storage (guarded by the breaker's lock)."""

    __slots__ = ("reset", "failures", "transition", "opened_at")

    def __init__(self) -> None:
        self.reset = False  # a success reset the closed count
        self.failures = 0  # failures counted since (or since the last push)
        self.transition: str | None = None  # the latest local transition: "open" or "closed"
        self.opened_at: float | None = None  # clock time, with transition == "open"


class Breaker:
    """The breaker of one downstream; made by `Downstreams` with the downstream's settings."""

    __slots__ = (
        "key", "_model", "_lock", "_clock", "_to_epoch", "_on_transition", "_shared",
        "shared_version", "_pending", "attributes", "__weakref__",
    )

    def __init__(
        self,
        key: str,
        *,
        threshold: int,
        open_seconds: float,
        half_open_calls: int,
        clock: Callable[[], float],
        to_epoch: Callable[[float], float],
        on_transition: OnTransition | None = None,
        shared: RedisSync | None = None,
    ) -> None:
        self.key = key
        self._model = BreakerModel(
            key, threshold=threshold, open_seconds=open_seconds, half_open_calls=half_open_calls
        )
        self._lock = threading.Lock()
        self._clock = clock
        self._to_epoch = to_epoch
        self._on_transition = on_transition
        self._shared = shared
        self.shared_version = 0  # the shared state's version this process last adopted or wrote
        self._pending = _Pending() if shared is not None else None
        self.attributes: dict[str, str | int] = {}  # the downstream's metric attributes (set by Downstreams)
        if shared is not None:
            shared.track(self)

    def __repr__(self) -> str:
        return f"<Breaker {self.key!r} {self.state()}>"

    @property
    def threshold(self) -> int:
        return self._model._ctx.threshold

    @property
    def open_seconds(self) -> float:
        return self._model.open_seconds

    # --- the call path ------------------------------------------------------------------------

    def admit(self) -> Permit:
        """A permit for one call, or a new `CircuitOpenError` (no I/O either way)."""
        model = self._model
        permit = model.closed_permit  # before the state: see the module docstring
        if model.closed:
            return permit
        with self._lock:
            decision = model.admit(self._clock())
            transitions = model.take_transitions()
        self._report(transitions)
        if isinstance(decision, Rejection):
            retry_at = None if decision.retry_at is None else self._to_epoch(decision.retry_at)
            raise CircuitOpenError(downstream=self.key, retry_at=retry_at)
        return decision

    def settle(self, permit: Permit, outcome: Outcome) -> None:
        """The verdict on a call `admit` let through; exactly once per permit."""
        model = self._model
        if outcome is Outcome.SUCCESS and not permit.trial and model.quiet() and permit.generation == model.generation:
            return  # nothing to reset: the hot path
        with self._lock:
            generation = model.generation
            failures = model.failures
            model.settle(permit, outcome, self._clock())
            transitions = model.take_transitions()
            pending = self._pending
            if pending is not None and permit.generation == generation and outcome is not Outcome.NONE:
                self._note(pending, generation, failures)
        if self._pending is not None and self._shared is not None:
            self._shared.wake()
        self._report(transitions)

    def _note(self, pending: _Pending, generation_before: int, failures_before: int) -> None:
        """Record for the next push what the verdict just changed (caller holds the lock)."""
        model = self._model
        if model.generation != generation_before:
            pending.transition = model.state
            pending.opened_at = model.opened_at
            pending.reset, pending.failures = False, 0
        elif model.closed:
            if model.failures < failures_before:  # a success reset the count
                pending.reset, pending.failures = True, 0
            elif model.failures > failures_before:
                pending.failures += model.failures - failures_before

    # --- reading ------------------------------------------------------------------------------------

    def state(self) -> str:
        """"closed", "half_open" or "open" as of now (an elapsed open window reads half_open). No I/O."""
        return self._model.state_at(self._clock())

    def status(self) -> BreakerStatus:
        with self._lock:
            model = self._model
            now = self._clock()
            state = model.state_at(now)
            opened_at = model.opened_at if model.state != "closed" else None
            retry_at = model.retry_at() if state == "open" else None
            failures = model.failures
        return BreakerStatus(
            downstream=self.key,
            state=state,
            failure_count=failures,
            opened_at=None if opened_at is None else self._to_epoch(opened_at),
            retry_at=None if retry_at is None else self._to_epoch(retry_at),
        )

    # --- shared storage (called by RedisSync on its thread) ----------------------------------------------

    def take_pending(self) -> tuple[bool, int, str | None, float | None, int] | None:
        """(reset, failures, transition, opened_at clock, base version) to push, or None."""
        pending = self._pending
        if pending is None:
            return None
        with self._lock:
            if not (pending.reset or pending.failures or pending.transition):
                return None
            taken = (pending.reset, pending.failures, pending.transition, pending.opened_at, self.shared_version)
            pending.reset, pending.failures, pending.transition, pending.opened_at = False, 0, None, None
        return taken

    def restore_pending(self, taken: tuple[bool, int, str | None, float | None, int]) -> None:
        """A push failed: merge what it carried back into what is pending (newer decisions win)."""
        pending = self._pending
        if pending is None:
            return
        reset, failures, transition, opened_at, _ = taken
        with self._lock:
            if pending.transition is None and transition is not None:
                pending.transition, pending.opened_at = transition, opened_at
            if pending.transition is None and not pending.reset:
                pending.reset = pending.reset or reset
                pending.failures += failures

    def adopt(self, state: str, failures: int, opened_at: float | None, version: int) -> None:
        """Take the shared state (``opened_at`` on our clock) when its version is new to us."""
        with self._lock:
            if version == self.shared_version:
                return
            pending = self._pending
            if pending is not None and pending.transition is not None:
                return  # ours is not pushed yet; the push decides
            self.shared_version = version
            self._model.force(state, failures=failures, opened_at=opened_at, now=self._clock())
            transitions = self._model.take_transitions()
        self._report(transitions)

    def pushed(self, version: int) -> None:
        with self._lock:
            self.shared_version = version

    # --- notification ------------------------------------------------------------------------------------

    def _report(self, transitions: list[tuple[str, str]]) -> None:
        for old, new in transitions:
            _logger.info("otel-integration: circuit breaker of %s: %s -> %s", self.key, old, new)
            callback = self._on_transition
            if callback is not None:
                try:
                    callback(self, old, new)
                except Exception:  # noqa: BLE001 - a listener must never replace the caller's outcome
                    _logger.debug("on_transition callback failed", exc_info=True)

    def reset_after_fork(self) -> None:
        """A forked child may inherit the lock held by a thread that does not exist there."""
        self._lock = threading.Lock()
