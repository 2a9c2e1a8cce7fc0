"""The retry budget (Finagle's RetryBudget), on a fake clock: exactly what README states at low and high traffic."""

from __future__ import annotations

import threading

import pytest

from otel_integration._client.budget import TTL, RetryBudget
from otel_integration._settings import Settings


def withdraw_all(budget: RetryBudget, limit: int = 100_000) -> int:
    taken = 0
    while taken < limit and budget.try_withdraw():
        taken += 1
    return taken


def test_reserve_is_min_per_second_times_the_window(clock):
    budget = RetryBudget(ratio=0.2, min_per_second=10, clock=clock)
    assert withdraw_all(budget) == 10 * TTL  # 100, with no call made yet


def test_calls_add_ratio_of_a_retry_each(clock):
    budget = RetryBudget(ratio=0.2, min_per_second=0, clock=clock)
    for _ in range(10):
        budget.record_call()
    assert withdraw_all(budget) == 2


@pytest.mark.parametrize(("ratio", "calls"), [(0.1, 10), (0.2, 5), (0.3, 10), (0.5, 2)])
def test_exact_arithmetic_no_float_rounding(clock, ratio, calls):
    budget = RetryBudget(ratio=ratio, min_per_second=0, clock=clock)
    for _ in range(calls):
        budget.record_call()
    assert withdraw_all(budget) == int(round(ratio * calls, 9))


def test_low_traffic_sixty_failing_calls_in_eight_seconds(clock):
    """The case of the issue: 60 calls, each wanting 2 retries, within 8 s (defaults)."""
    settings = Settings()
    budget = RetryBudget(ratio=settings.retry_budget_ratio, min_per_second=settings.retry_budget_min_per_second, clock=clock)
    granted = 0
    for _ in range(60):
        budget.record_call()
        granted += sum(budget.try_withdraw() for _ in range(2))
        clock.advance(8 / 60)
    assert granted == 100 + 12  # the reserve plus 20 % of the calls: not all 120


def test_high_traffic_ten_thousand_calls_in_ten_seconds(clock):
    """Each of 10,000 calls in 10 s wanting a retry: the reserve plus 20 % of them (README: 2,100, +21 %)."""
    budget = RetryBudget(ratio=0.2, min_per_second=10, clock=clock)
    granted = 0
    for _ in range(10_000):
        budget.record_call()
        granted += budget.try_withdraw()
        clock.advance(9.99 / 10_000)
    assert granted == 100 + 2_000


def test_everything_expires_after_the_window(clock):
    budget = RetryBudget(ratio=1.0, min_per_second=1, clock=clock)
    for _ in range(50):
        budget.record_call()
    assert withdraw_all(budget) == 50 + 10
    clock.advance(TTL)  # calls and retries of the last window are gone: only the reserve is left
    assert withdraw_all(budget) == 10


def test_a_quiet_period_banks_nothing(clock):
    budget = RetryBudget(ratio=0.2, min_per_second=10, clock=clock)
    clock.advance(3600)
    assert withdraw_all(budget) == 100


def test_no_reserve_and_no_ratio_means_no_retries(clock):
    budget = RetryBudget(ratio=0, min_per_second=0, clock=clock)
    for _ in range(100):
        budget.record_call()
    assert not budget.try_withdraw()


def test_refund_gives_the_retry_back(clock):
    budget = RetryBudget(ratio=0, min_per_second=0.1, clock=clock)  # a reserve of exactly 1
    assert budget.try_withdraw() and not budget.try_withdraw()
    budget.refund()
    assert budget.try_withdraw()


def test_clock_going_backwards_grants_nothing_extra(clock):
    budget = RetryBudget(ratio=0, min_per_second=1, clock=clock)
    assert withdraw_all(budget) == 10
    clock.advance(-100)
    assert not budget.try_withdraw()


def test_concurrent_withdrawals_never_exceed_the_budget(clock):
    budget = RetryBudget(ratio=0, min_per_second=5, clock=clock)  # 50
    granted: list[bool] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(100):
            result = budget.try_withdraw()
            with lock:
                granted.append(result)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 50


def test_defaults_match_the_documented_settings():
    settings = Settings()
    assert (settings.retry_budget_ratio, settings.retry_budget_min_per_second, TTL) == (0.2, 10.0, 10.0)
