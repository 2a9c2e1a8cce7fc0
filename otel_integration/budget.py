"""Retry budget: retries may add only a bounded share of load to a downstream.

Retries multiply load exactly when a downstream is struggling. A budget
(as in Finagle's RetryBudget, Envoy's retry budgets and gRPC's retry
throttling) caps them per downstream:

- every logical call deposits `ratio` tokens (0.2: retries add at most ~20%);
- every retry withdraws one token;
- a floor of `min_per_second` tokens per second refills on its own, so a
  client with little traffic can still retry.

Both reserves are capped (the floor at `min_per_second * window`, deposits at
the same size but at least 10), so a long busy or quiet period cannot bank a
retry storm.
"""

from __future__ import annotations

import threading

# Ten deposits of 0.1 add up to 0.9999999999999999: compare with a tolerance.
_ONE = 1.0 - 1e-9
import time
from collections.abc import Callable


class RetryBudget:
    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._min_per_second = min_per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._floor_capacity = min_per_second * window
        self._floor_tokens = self._floor_capacity
        self._deposit_capacity = max(10.0, self._floor_capacity)
        self._deposits = 0.0
        self._refilled_at = clock()

    def record_call(self) -> None:
        """A logical call started: it earns `ratio` of a retry."""
        with self._lock:
            self._deposits = min(self._deposit_capacity, self._deposits + self._ratio)

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False when it is empty."""
        with self._lock:
            now = self._clock()
            elapsed = now - self._refilled_at
            self._refilled_at = now
            if elapsed > 0:
                self._floor_tokens = min(self._floor_capacity, self._floor_tokens + elapsed * self._min_per_second)
            if self._deposits >= _ONE:
                self._deposits = max(0.0, self._deposits - 1.0)
                return True
            if self._floor_tokens >= _ONE:
                self._floor_tokens = max(0.0, self._floor_tokens - 1.0)
                return True
            return False
