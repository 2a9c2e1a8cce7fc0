"""Unit tests of otel_integration.budget.RetryBudget, driven by a fake clock."""

from __future__ import annotations

import threading

import pytest

from otel_integration.budget import RetryBudget


def drain(budget: RetryBudget, limit: int = 10_000) -> int:
    """Withdraw until refused; how many were granted."""
    granted = 0
    while granted < limit and budget.try_withdraw():
        granted += 1
    return granted


def test_floor_starts_full(clock):
    budget = RetryBudget(ratio=0.0, min_per_second=2.0, window=5.0, clock=clock)
    assert drain(budget) == 10  # 2/s * 5 s


def test_floor_refills_at_min_per_second(clock):
    budget = RetryBudget(ratio=0.0, min_per_second=2.0, window=5.0, clock=clock)
    drain(budget)
    clock.advance(0.4)
    assert not budget.try_withdraw()  # 0.8 of a token
    clock.advance(0.1)
    assert budget.try_withdraw()  # 1.0
    assert not budget.try_withdraw()
    clock.advance(1.5)
    assert drain(budget) == 3


def test_floor_refill_is_capped_at_the_window(clock):
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, window=10.0, clock=clock)
    drain(budget)
    clock.advance(3600)  # an hour of quiet banks no more than one window
    assert drain(budget) == 10


def test_no_floor_and_no_ratio_means_no_retries(clock):
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)
    for _ in range(100):
        budget.record_call()
    clock.advance(100)
    assert not budget.try_withdraw()


def test_calls_earn_ratio_of_a_retry(clock):
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, clock=clock)
    for _ in range(4):
        budget.record_call()
    assert not budget.try_withdraw()  # 0.8
    budget.record_call()
    assert budget.try_withdraw()  # 1.0
    assert not budget.try_withdraw()


def test_ratio_bounds_retries_to_a_share_of_calls(clock):
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, clock=clock)
    granted = 0
    for _ in range(50):  # steady traffic, every call failing and wanting a retry
        budget.record_call()
        granted += budget.try_withdraw()
    assert granted == 10  # 20% of 50


@pytest.mark.parametrize(
    "ratio,calls",
    [
        (0.1, 10),
        (0.25, 4),
        (0.5, 2),
        (0.2, 5),
    ],
)
def test_exactly_enough_calls_earn_a_retry(clock, ratio, calls):
    # `calls` deposits of `ratio` make at least one whole token: floating point
    # rounding (ten times 0.1 is 0.9999999999999999) must not refuse it.
    budget = RetryBudget(ratio=ratio, min_per_second=0.0, clock=clock)
    for _ in range(calls):
        budget.record_call()
    assert budget.try_withdraw()


def test_deposits_are_capped_at_ten_or_the_floor_size(clock):
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, clock=clock)
    for _ in range(1000):  # a long busy period
        budget.record_call()
    assert drain(budget) == 10

    big = RetryBudget(ratio=1.0, min_per_second=3.0, window=10.0, clock=clock)
    for _ in range(1000):
        big.record_call()
    assert drain(big) == 30 + 30  # deposits capped at the floor size (30), plus the full floor


def test_deposits_are_spent_before_the_floor(clock):
    budget = RetryBudget(ratio=1.0, min_per_second=1.0, window=2.0, clock=clock)
    budget.record_call()
    budget.record_call()
    assert budget.try_withdraw() and budget.try_withdraw()  # from deposits
    assert drain(budget) == 2  # the floor is intact


def test_clock_going_backwards_grants_nothing_extra(clock):
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, window=2.0, clock=clock)
    drain(budget)
    clock.advance(-50)
    assert not budget.try_withdraw()
    clock.advance(1)
    assert budget.try_withdraw()


def test_concurrent_withdrawals_never_exceed_the_tokens(clock):
    budget = RetryBudget(ratio=0.0, min_per_second=10.0, window=10.0, clock=clock)  # 100 tokens, frozen clock
    granted = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        granted.append(sum(budget.try_withdraw() for _ in range(50)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 100


def test_defaults_match_the_documented_settings():
    budget = RetryBudget()
    assert drain(budget) == 100  # 10/s floor over a 10 s window
