"""The circuit breaker: the pure model (permits, generations, trials), the locked `Breaker`, fork safety.

Deterministic: a fake clock drives every transition. The ``naive purgatory``
tests pin down the purgatory 3.0.1 behaviours the model exists to avoid;
each would fail if the layer used purgatory's breaker as it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import sys
import threading
import time
import traceback

import pytest
from purgatory import AsyncCircuitBreakerFactory, SyncCircuitBreakerFactory

from otel_integration._client.breaker import Breaker
from otel_integration._client.breaker.model import BreakerModel, Outcome, Permit, Rejection
from otel_integration._client.probes import Probe
from otel_integration.errors import CircuitOpenError, DownstreamUnhealthyError

SUCCESS, FAILURE, NONE = Outcome.SUCCESS, Outcome.FAILURE, Outcome.NONE


def model(threshold: int = 3, open_seconds: float = 10, half_open_calls: int = 1) -> BreakerModel:
    return BreakerModel("svc", threshold=threshold, open_seconds=open_seconds, half_open_calls=half_open_calls)


def admitted(m: BreakerModel, now: float) -> Permit:
    permit = m.admit(now)
    assert isinstance(permit, Permit), permit
    return permit


def fail(m: BreakerModel, now: float, times: int = 1) -> None:
    for _ in range(times):
        m.settle(admitted(m, now), FAILURE, now)


# --- the model ----------------------------------------------------------------------------------


def test_consecutive_failures_open_and_a_success_resets_the_count():
    m = model()
    fail(m, 0, 2)
    m.settle(admitted(m, 0), SUCCESS, 0)
    fail(m, 0, 2)
    assert m.state == "closed" and m.failures == 2
    fail(m, 1)
    assert m.state == "open" and m.opened_at == 1
    assert m.take_transitions() == [("closed", "open")]
    assert m.admit(5) == Rejection(retry_at=11)


def test_open_window_then_one_trial_whose_success_closes():
    m = model()
    fail(m, 0, 3)
    assert m.state_at(9.9) == "open" and isinstance(m.admit(9.9), Rejection)
    assert m.state_at(10) == "half_open"
    trial = admitted(m, 10)
    assert trial.trial and m.admit(10) == Rejection(retry_at=None)  # the one slot is taken
    m.settle(trial, SUCCESS, 11)
    assert m.state == "closed" and m.failures == 0
    assert m.take_transitions() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_trial_reopens_for_a_new_window():
    m = model()
    fail(m, 0, 3)
    trial = admitted(m, 10)
    m.settle(trial, FAILURE, 12)
    assert m.state == "open" and m.opened_at == 12
    assert isinstance(m.admit(21.9), Rejection)
    assert admitted(m, 22).trial


def test_stale_failure_from_a_call_admitted_while_closed_cannot_reopen_half_open():
    """The issue's bug: a failure of a pre-open call reopened a half-open breaker; the trial's 200 was ignored."""
    m = model()
    early = admitted(m, 0)  # admitted while closed, answers late
    fail(m, 0, 3)
    trial = admitted(m, 10)
    m.settle(early, FAILURE, 10.5)
    assert m.state == "half_open"
    m.settle(trial, SUCCESS, 11)
    assert m.state == "closed"


def test_stale_success_cannot_close_before_the_trial_answers():
    m = model()
    early = admitted(m, 0)
    fail(m, 0, 3)
    trial = admitted(m, 10)
    m.settle(early, SUCCESS, 10.5)
    assert m.state == "half_open"
    m.settle(trial, FAILURE, 11)
    assert m.state == "open"


def test_a_cancelled_pre_open_call_does_not_free_a_trial_slot():
    """The issue's bug: 2 trials ran with half_open_calls=1 after a pre-open call was cancelled."""
    m = model()
    early = admitted(m, 0)
    fail(m, 0, 3)
    admitted(m, 10)
    m.settle(early, NONE, 10.5)
    assert m.admit(10.5) == Rejection(retry_at=None)


def test_a_slow_trial_is_still_the_trial():
    """No "presumed lost": a trial longer than the open window does not let a second one through."""
    m = model(open_seconds=10)
    fail(m, 0, 3)
    trial = admitted(m, 10)
    assert m.admit(10 + 3600) == Rejection(retry_at=None)
    m.settle(trial, SUCCESS, 10 + 3600)
    assert m.state == "closed"


def test_a_cancelled_trial_frees_its_slot_and_counts_nothing():
    m = model()
    fail(m, 0, 3)
    trial = admitted(m, 10)
    m.settle(trial, NONE, 11)
    assert m.state == "half_open"
    assert admitted(m, 11).trial


@pytest.mark.parametrize("slots", [1, 2, 5])
def test_half_open_admits_exactly_the_configured_trials(slots):
    m = model(half_open_calls=slots)
    fail(m, 0, 3)
    decisions = [m.admit(10) for _ in range(10)]
    assert sum(isinstance(d, Permit) for d in decisions) == slots


def test_verdicts_while_open_count_nothing():
    m = model()
    pending = [admitted(m, 0) for _ in range(5)]
    for permit in pending[:3]:
        m.settle(permit, FAILURE, 0)
    assert m.state == "open"
    for permit, outcome in zip(pending[3:], (FAILURE, SUCCESS)):
        m.settle(permit, outcome, 1)
    assert m.state == "open" and m.failures == 3


def test_every_transition_starts_a_generation_and_closed_permits_are_shared():
    m = model()
    assert admitted(m, 0) is admitted(m, 0)  # no allocation on the hot path
    before = m.generation
    fail(m, 0, 3)
    assert m.generation == before + 1
    admitted(m, 10)
    assert m.generation == before + 2


def test_adopting_a_shared_state_makes_older_permits_stale():
    m = model()
    early = admitted(m, 0)
    m.force("open", failures=3, opened_at=5, now=6)
    assert m.state == "open" and m.opened_at == 5
    m.settle(early, SUCCESS, 6)
    assert m.state == "open"
    m.force("closed", failures=0, opened_at=None, now=7)
    assert m.state == "closed"
    assert m.take_transitions() == [("closed", "open"), ("open", "closed")]


# --- Breaker: the model behind a lock, our clock, fresh errors ----------------------------------------


@pytest.fixture
def transitions() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def breaker(clock, transitions) -> Breaker:
    return Breaker(
        "svc", threshold=3, open_seconds=10, half_open_calls=1, clock=clock,
        to_epoch=lambda at: at + 1_000_000, on_transition=lambda b, old, new: transitions.append((b.key, old, new)),
    )


def open_breaker(b: Breaker) -> None:
    for _ in range(3):
        b.settle(b.admit(), FAILURE)


def test_rejections_are_fresh_errors_with_epoch_retry_at(breaker, clock):
    open_breaker(breaker)
    errors = []
    for _ in range(3):
        with pytest.raises(CircuitOpenError) as caught:
            breaker.admit()
        errors.append(caught.value)
    assert len({id(e) for e in errors}) == 3
    assert all(len(traceback.extract_tb(e.__traceback__)) <= 2 for e in errors)
    assert errors[0].retry_at == clock() + 10 + 1_000_000 - 0  # opened now, plus the window, in epoch
    assert errors[0].downstream == "svc" and "svc" in str(errors[0])


def test_half_open_rejection_has_no_retry_at(breaker, clock):
    open_breaker(breaker)
    clock.advance(10)
    breaker.admit()
    with pytest.raises(CircuitOpenError) as caught:
        breaker.admit()
    assert caught.value.retry_at is None and "half-open" in str(caught.value)


def test_transitions_follow_the_injected_clock_not_time_time(breaker, clock, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 0.0)  # purgatory's clock would be stuck
    open_breaker(breaker)
    clock.advance(10)
    assert breaker.state() == "half_open"


def test_status_reports_epoch_times(breaker, clock):
    open_breaker(breaker)
    status = breaker.status()
    assert (status.state, status.failure_count) == ("open", 3)
    assert status.opened_at == clock() + 1_000_000 and status.retry_at == clock() + 10 + 1_000_000


def test_listener_errors_never_reach_the_caller(clock, caplog):
    def bad(b: Breaker, old: str, new: str) -> None:
        raise RuntimeError("listener bug")

    b = Breaker("svc", threshold=1, open_seconds=10, half_open_calls=1, clock=clock, to_epoch=lambda at: at, on_transition=bad)
    b.settle(b.admit(), FAILURE)
    assert b.state() == "open"


def test_counts_stay_exact_under_threads(clock):
    b = Breaker("svc", threshold=10_000, open_seconds=10, half_open_calls=1, clock=clock, to_epoch=lambda at: at)

    def work() -> None:
        for _ in range(500):
            b.settle(b.admit(), FAILURE)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.status().failure_count == 4000


def test_trial_slots_never_exceeded_under_threads(clock):
    b = Breaker("svc", threshold=1, open_seconds=10, half_open_calls=2, clock=clock, to_epoch=lambda at: at)
    b.settle(b.admit(), FAILURE)
    clock.advance(10)
    in_flight, peak, lock = [0], [0], threading.Lock()

    def work() -> None:
        for _ in range(200):
            try:
                permit = b.admit()
            except CircuitOpenError:
                continue
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            with lock:
                in_flight[0] -= 1
            b.settle(permit, NONE)  # the trial never answers: its slot is freed, it counts nothing

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 2 and b.state() == "half_open"


# --- errors survive pickling (a process-pool worker may raise them) -------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        CircuitOpenError(downstream="extract", retry_at=1_800_000_000.0),
        CircuitOpenError(downstream="extract", retry_at=None),
        DownstreamUnhealthyError(downstream="extract"),
    ],
)
def test_errors_pickle(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error) and copy.downstream == "extract"
    assert getattr(copy, "retry_at", None) == getattr(error, "retry_at", None)


def test_a_far_retry_at_still_formats():
    """The issue's bug: 1e12 s gave ValueError: year 33715 is out of range instead of the error."""
    assert "epoch seconds" in str(CircuitOpenError(downstream="x", retry_at=1e18))


# --- fork safety -------------------------------------------------------------------------------------------------


def _in_child(check: object) -> int:
    """Run `check()` in a forked child; its exit status (killed after 20 s: a hang)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            code = 0 if check() else 1  # type: ignore[operator]
        except BaseException:
            code = 2
        os._exit(code)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_while_a_probe_runs_gets_fresh_results():
    """The issue's bug: the child inherited the probe "running" forever; every call waited 0.5 s."""
    parent = os.getpid()
    release = threading.Event()

    def check(url: str) -> tuple[bool, str | None]:
        if os.getpid() == parent:
            release.wait(30)  # still running in the parent when the child is forked
        return True, None

    probe = Probe("extract", "http://extract/healthz", ttl=30, check=check)
    probe.refresh()
    try:
        assert _in_child(lambda: probe.status(wait=10) is True) == 0
    finally:
        release.set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_while_a_breaker_lock_is_held_does_not_deadlock(clock):
    b = Breaker("svc", threshold=1, open_seconds=10, half_open_calls=1, clock=clock, to_epoch=lambda at: at)
    b.settle(b.admit(), FAILURE)  # open: admit takes the lock
    from otel_integration import _forks

    class Holder:  # what the downstreams LRU does for its breakers
        def _after_fork(self) -> None:
            b.reset_after_fork()

    holder = Holder()
    _forks.reset_in_child(holder)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with b._lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)

    def admit_in_child() -> bool:
        try:
            b.admit()
        except CircuitOpenError:
            return True
        return False

    try:
        assert _in_child(admit_in_child) == 0
    finally:
        release.set()
        thread.join()


# --- what purgatory 3.0.1 does on its own (why the model exists) ------------------------------------------------


def test_naive_purgatory_reraises_one_instance():
    factory = SyncCircuitBreakerFactory(default_threshold=1, default_ttl=60)
    breaker = factory.get_breaker("svc")
    with pytest.raises(RuntimeError):
        with breaker:
            raise RuntimeError("boom")
    seen = []
    for _ in range(2):
        try:
            with breaker:
                pass
        except Exception as exc:  # noqa: BLE001
            seen.append(exc)
    assert seen[0] is seen[1]  # the same exception object, its traceback growing


def test_naive_purgatory_admits_every_half_open_caller():
    from purgatory.domain.model import Context

    context = Context("svc", threshold=1, ttl=60, state="half-opened")
    for _ in range(5):
        context.handle_new_request()  # no limit, no error
    assert context.state == "half-opened"


def test_naive_purgatory_counts_cancellation_as_failure():
    factory = AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=60)

    async def main() -> str:
        breaker = await factory.get_breaker("svc")

        async def call() -> None:
            async with breaker:
                await asyncio.sleep(3600)

        task = asyncio.ensure_future(call())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return (await factory.get_breaker("svc")).context.state

    assert asyncio.run(main()) == "opened"


def test_naive_purgatory_listener_error_replaces_the_callers_error():
    factory = SyncCircuitBreakerFactory(default_threshold=1, default_ttl=60)

    def listener(*args: object) -> None:
        raise LookupError("listener")

    factory.add_listener(listener)
    with pytest.raises(LookupError):
        with factory.get_breaker("svc"):
            raise ValueError("the caller's own error")
