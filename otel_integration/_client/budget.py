"""Retry budget: retries may add only a bounded share of load to a downstream.

Retries multiply load exactly when a downstream is struggling. The budget is
Finagle's ``RetryBudget`` (also the model of Envoy's retry budgets): over a
sliding window of `TTL` seconds, per downstream,

    retries allowed = min_per_second × TTL  +  ratio × calls in the window

so a retry is made only while

    retries in the window < min_per_second × TTL + ratio × calls in the window.

With the defaults (ratio 0.2, 10 per second, 10 s): a client making 10,000
calls in 10 s may retry 100 + 2,000 times in those 10 s (+21 %); one making
60 calls may retry 100 + 12 times: at low traffic the reserve, not the
ratio, is the bound, so a client that has just started can still retry.
Every withdrawal and deposit expires after `TTL`, so neither a busy nor a
quiet period banks retries for later. The window moves in steps of
`TTL / BUCKETS` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

TTL = 10.0  # seconds: Finagle's default
BUCKETS = 10
_SCALE = 1000  # counts in thousandths, so ratio × calls is exact (0.1 × 10 == 1, not 0.999...)


class RetryBudget:
    __slots__ = ("_ratio", "_reserve", "_clock", "_lock", "_calls", "_retries", "_slot", "_step")

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = round(ratio * _SCALE)
        self._reserve = round(min_per_second * TTL * _SCALE)
        self._clock = clock
        self._lock = threading.Lock()
        self._step = TTL / BUCKETS
        # Ring of per-step counts; `_slot` is the absolute step number of the newest bucket.
        self._calls = [0] * BUCKETS
        self._retries = [0] * BUCKETS
        self._slot = int(clock() // self._step)

    def _advance(self) -> int:
        """Expire the buckets older than the window; the index of the current one (lock held)."""
        slot = int(self._clock() // self._step)
        if slot > self._slot:
            for s in range(max(self._slot + 1, slot - BUCKETS + 1), slot + 1):
                self._calls[s % BUCKETS] = 0
                self._retries[s % BUCKETS] = 0
            self._slot = slot
        return self._slot % BUCKETS  # a clock going backwards stays in the newest bucket

    def record_call(self) -> None:
        """A logical call started: it earns ``ratio`` of a retry, for `TTL` seconds."""
        with self._lock:
            self._calls[self._advance()] += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False when none is left."""
        with self._lock:
            index = self._advance()
            allowed = self._reserve + self._ratio * sum(self._calls)
            if (sum(self._retries) + 1) * _SCALE > allowed:
                return False
            self._retries[index] += 1
            return True

    def refund(self) -> None:
        """A withdrawn retry was not made after all (the breaker opened during the wait)."""
        with self._lock:
            index = self._advance()
            for i in (index, *range(BUCKETS)):
                if self._retries[i]:
                    self._retries[i] -= 1
                    return

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
