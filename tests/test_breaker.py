"""Tests of otel_integration.breaker.

Deterministic: a fake clock drives every transition; the only waits are for a
real redis-server (tests/redis_peer.py) to start.  The ``SharpEdge`` tests pin
down each purgatory 3.0.1 problem our layer fixes: each would fail if the
layer simply used purgatory's breaker.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
import traceback

import pytest
from purgatory import AsyncCircuitBreakerFactory, SyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from otel_integration.breaker import KEY_PREFIX, BreakerRegistry, BreakerStatus
from otel_integration.settings import mask_secret_url as mask_url
from otel_integration.errors import CircuitOpenError

try:
    from tests.redis_peer import RedisPeer, free_port
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from redis_peer import RedisPeer, free_port  # type: ignore[no-redef]

LOGGER = "otel_integration.breaker"


@pytest.fixture
def transitions() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def registry(clock, transitions):
    reg = BreakerRegistry(threshold=3, open_seconds=10, clock=clock, on_transition=lambda *t: transitions.append(t))
    yield reg
    reg.close()


def fail(breaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.admit()
        breaker.record_failure()


def rejected(breaker) -> bool:
    try:
        breaker.admit()
    except CircuitOpenError:
        return True
    return False


# --------------------------------------------------------------------------
# State machine


def test_consecutive_failures_open_and_success_resets(registry, transitions):
    b = registry.get("svc")
    fail(b, 2)
    b.admit()
    b.record_success()  # resets the consecutive count
    fail(b, 2)
    assert b.state() == "closed"
    assert registry.snapshot()["svc"].failure_count == 2
    fail(b, 1)
    assert b.state() == "open"
    assert transitions == [("svc", "closed", "open")]
    with pytest.raises(CircuitOpenError) as info:
        b.admit()
    assert info.value.downstream == "svc"
    assert isinstance(info.value, CircuitOpenError)


def test_half_open_trial_success_closes(registry, clock, transitions):
    b = registry.get("svc")
    fail(b, 3)
    clock.advance(9.9)
    assert b.state() == "open" and rejected(b)
    clock.advance(0.1)
    assert b.state() == "half_open"
    b.admit()
    b.record_success()
    assert b.state() == "closed"
    assert transitions == [("svc", "closed", "open"), ("svc", "open", "half_open"), ("svc", "half_open", "closed")]
    fail(b, 2)
    assert b.state() == "closed"  # the count restarted from zero


def test_half_open_trial_failure_reopens_for_another_period(registry, clock, transitions):
    b = registry.get("svc")
    fail(b, 3)
    clock.advance(10)
    b.admit()
    clock.advance(2)
    b.record_failure()
    assert b.state() == "open"
    clock.advance(9.9)
    assert rejected(b)  # reopened at t+12, not t+10
    clock.advance(0.1)
    b.admit()
    assert transitions[-2:] == [("svc", "half_open", "open"), ("svc", "open", "half_open")]


def test_late_verdicts_while_open_count_nothing(registry):
    b = registry.get("svc")
    for _ in range(5):
        b.admit()  # five calls in flight while closed
    for _ in range(3):
        b.record_failure()
    assert b.state() == "open"
    b.record_failure()
    b.record_success()
    b.release()
    status = registry.snapshot()["svc"]
    assert status.state == "open" and status.failure_count == 3


def test_release_counts_nothing(registry):
    b = registry.get("svc")
    fail(b, 2)
    for _ in range(10):
        b.admit()
        b.release()
    assert registry.snapshot()["svc"].failure_count == 2
    assert b.state() == "closed"


def test_lost_trial_is_presumed_dead_after_open_seconds(registry, clock):
    b = registry.get("svc")
    fail(b, 3)
    clock.advance(10)
    b.admit()  # trial that never reports
    assert rejected(b)
    clock.advance(10)
    b.admit()  # a new trial is allowed
    b.record_success()
    assert b.state() == "closed"


def test_snapshot_reports_epoch_times(registry, clock):
    import time

    b = registry.get("svc")
    registry.get("other")
    fail(b, 3)
    snap = registry.snapshot()
    assert set(snap) == {"svc", "other"}
    assert snap["other"] == BreakerStatus("other", "closed", 0, None, None)
    status = snap["svc"]
    assert status.state == "open" and status.failure_count == 3
    assert abs(status.opened_at - time.time()) < 5
    assert status.retry_at == pytest.approx(status.opened_at + 10)
    assert status.as_dict()["state"] == "open"
    clock.advance(10)
    assert registry.snapshot()["svc"].state == "half_open"
    assert registry.snapshot()["svc"].retry_at is None


def test_get_returns_same_object_and_evicts_least_recently_used(clock):
    reg = BreakerRegistry(max_breakers=3, clock=clock)
    a, b, c = reg.get("a"), reg.get("b"), reg.get("c")
    assert reg.get("a") is a  # "a" is now the most recently used
    reg.get("d")
    assert len(reg) == 3
    assert set(reg.snapshot()) == {"a", "c", "d"}
    assert reg.get("b") is not b  # evicted: state lost, a fresh breaker
    assert reg.get("a") is a


def test_get_is_thread_safe(clock):
    reg = BreakerRegistry(clock=clock)
    barrier = threading.Barrier(16)
    got = []

    def worker():
        barrier.wait()
        got.append(reg.get("svc"))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in got}) == 1


def test_guard_maps_outcomes(registry):
    b = registry.get("svc")
    with pytest.raises(ValueError):
        with b.guard():
            raise ValueError("boom")
    assert registry.snapshot()["svc"].failure_count == 1
    with pytest.raises(KeyboardInterrupt):
        with b.guard():
            raise KeyboardInterrupt
    assert registry.snapshot()["svc"].failure_count == 1
    with b.guard():
        pass
    assert registry.snapshot()["svc"].failure_count == 0


def test_invalid_configuration():
    with pytest.raises(ValueError):
        BreakerRegistry(threshold=0)
    with pytest.raises(ValueError):
        BreakerRegistry(half_open_calls=0)
    with pytest.raises(ValueError, match="unsupported"):
        BreakerRegistry(storage_url="memcached://secret@x")
    assert BreakerRegistry(storage_url="memory").storage == "memory"
    assert BreakerRegistry(storage_url=None).storage == "memory"


def test_mask_url():
    assert mask_url("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert mask_url("redis://user:s3cret@db/1") == "redis://user:***@db/1"
    assert mask_url("redis://db:6379/0") == "redis://db:6379/0"


def test_missing_redis_client_logs_one_error_and_uses_memory(monkeypatch, caplog, clock):
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    caplog.set_level(logging.WARNING, logger=LOGGER)
    reg = BreakerRegistry(threshold=2, storage_url="redis://:pw@127.0.0.1:1/0", clock=clock)
    b = reg.get("svc")
    fail(b, 2)
    assert rejected(b)
    errors = [r for r in caplog.records if r.name == LOGGER]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert "redis" in errors[0].getMessage() and "pw" not in errors[0].getMessage()
    assert reg.storage == "memory"


def test_async_memory_path(registry, clock):
    async def main():
        b = registry.get("svc")
        for _ in range(3):
            await b.aadmit()
            await b.arecord_failure()
        with pytest.raises(CircuitOpenError):
            await b.aadmit()
        clock.advance(10)
        await b.aadmit()
        await b.arecord_success()
        await b.aadmit()
        await b.arelease()
        assert b.state() == "closed"

    asyncio.run(main())


# --------------------------------------------------------------------------
# The purgatory 3.0.1 sharp edges


class TestSharpEdge1FreshRejection:
    def test_each_rejection_is_a_new_exception_with_a_short_traceback(self, registry):
        b = registry.get("svc")
        fail(b, 3)
        caught = []
        for _ in range(50):
            try:
                b.admit()
            except CircuitOpenError as exc:
                caught.append(exc)
        assert len({id(e) for e in caught}) == 50
        depths = {len(traceback.extract_tb(e.__traceback__)) for e in caught}
        assert len(depths) == 1 and depths.pop() <= 3
        assert all(e.retry_at == caught[0].retry_at for e in caught)

    def test_naive_purgatory_reraises_one_instance(self):
        """Why: purgatory raises its OpenedState object, traceback growing each time."""
        factory = SyncCircuitBreakerFactory(default_threshold=1, default_ttl=60)
        brk = factory.get_breaker("svc")
        with pytest.raises(ZeroDivisionError):
            with brk:
                1 / 0
        caught = []
        for _ in range(3):
            try:
                with factory.get_breaker("svc"):
                    pass
            except OpenedState as exc:
                caught.append((exc, len(traceback.extract_tb(exc.__traceback__))))
        assert caught[0][0] is caught[2][0]
        assert caught[2][1] > caught[0][1]


class TestSharpEdge2HalfOpenLimit:
    @pytest.mark.parametrize("slots", [1, 3])
    def test_threads(self, clock, slots):
        reg = BreakerRegistry(threshold=1, open_seconds=10, half_open_calls=slots, clock=clock)
        b = reg.get("svc")
        fail(b, 1)
        clock.advance(10)
        barrier = threading.Barrier(32)
        admitted, rejections = [], []

        def worker():
            barrier.wait()
            try:
                b.admit()
                admitted.append(1)
            except CircuitOpenError:
                rejections.append(1)

        threads = [threading.Thread(target=worker) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(admitted) == slots and len(rejections) == 32 - slots
        assert b.state() == "half_open"

    def test_asyncio_tasks(self, clock):
        reg = BreakerRegistry(threshold=1, open_seconds=10, half_open_calls=2, clock=clock)
        b = reg.get("svc")
        fail(b, 1)
        clock.advance(10)

        async def main():
            gate = asyncio.Event()
            inside = []

            async def call():
                async with b.aguard():
                    inside.append(1)
                    await gate.wait()

            tasks = [asyncio.create_task(call()) for _ in range(20)]
            await asyncio.sleep(0)
            assert len(inside) == 2  # the rest were rejected without waiting
            gate.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert sum(isinstance(r, CircuitOpenError) for r in results) == 18
            assert b.state() == "closed"

        asyncio.run(main())

    def test_naive_purgatory_admits_every_half_open_caller(self):
        from purgatory.domain.model import Context

        context = Context("svc", threshold=1, ttl=60, state="half-opened")
        for _ in range(5):
            context.handle_new_request()  # nobody is turned away
        assert context.state == "half-opened"


class TestSharpEdge3ThreadSafety:
    def test_failure_counts_stay_exact(self, clock):
        reg = BreakerRegistry(threshold=10**9, clock=clock)
        b = reg.get("svc")
        n_threads, per_thread = 8, 3000
        barrier = threading.Barrier(n_threads)

        def worker():
            barrier.wait()
            for _ in range(per_thread):
                b.admit()
                b.record_failure()

        threads = [threading.Thread(target=worker) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert reg.snapshot()["svc"].failure_count == n_threads * per_thread

    def test_half_open_slots_never_exceeded_under_load(self, clock):
        reg = BreakerRegistry(threshold=1, half_open_calls=2, clock=clock)
        b = reg.get("svc")
        fail(b, 1)
        clock.advance(30)
        lock = threading.Lock()
        inside = [0, 0]  # current, max
        admitted = [0]

        def worker():
            for _ in range(2000):
                try:
                    b.admit()
                except CircuitOpenError:
                    continue
                with lock:
                    inside[0] += 1
                    inside[1] = max(inside[1], inside[0])
                    admitted[0] += 1
                with lock:
                    inside[0] -= 1
                b.release()

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert inside[1] <= 2 and admitted[0] >= 2
        assert b.state() == "half_open"
        assert b._ctx.trials == 0  # every slot was given back


class TestSharpEdge4Clock:
    def test_transitions_follow_the_injected_clock_not_time_time(self, registry, clock, monkeypatch):
        import time

        b = registry.get("svc")
        fail(b, 3)
        real_time = time.time
        # Wall clock jumps an hour ahead (NTP step): the breaker must not care.
        monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
        assert b.state() == "open" and rejected(b)
        monkeypatch.setattr(time, "time", real_time)
        clock.advance(10)  # only the injected clock opens the door
        b.admit()
        assert b.state() == "half_open"

    def test_retry_at_is_epoch_seconds(self, registry, clock):
        import time

        b = registry.get("svc")
        fail(b, 3)
        opened_at = registry.snapshot()["svc"].opened_at
        assert opened_at == pytest.approx(time.time(), abs=2)
        clock.advance(4)  # epoch times derived from a fake clock move with it
        with pytest.raises(CircuitOpenError) as info:
            b.admit()
        assert info.value.retry_at == pytest.approx(opened_at + 10)

        real = BreakerRegistry(threshold=1, open_seconds=30)  # default monotonic clock
        fail(real.get("svc"), 1)
        with pytest.raises(CircuitOpenError) as info:
            real.get("svc").admit()
        assert info.value.retry_at == pytest.approx(time.time() + 30, abs=2)

    def test_default_clock_is_monotonic(self):
        import time

        assert BreakerRegistry()._clock is time.monotonic


class TestSharpEdge5Cancellation:
    def test_cancelled_call_counts_nothing(self, registry):
        b = registry.get("svc")

        async def main():
            started = asyncio.Event()

            async def call():
                async with b.aguard():
                    started.set()
                    await asyncio.sleep(3600)

            for _ in range(5):
                started.clear()
                task = asyncio.create_task(call())
                await started.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        asyncio.run(main())
        assert b.state() == "closed"
        assert registry.snapshot()["svc"].failure_count == 0

    def test_cancelled_trial_frees_its_slot(self, registry, clock):
        b = registry.get("svc")
        fail(b, 3)
        clock.advance(10)

        async def main():
            started = asyncio.Event()

            async def call():
                async with b.aguard():
                    started.set()
                    await asyncio.sleep(3600)

            task = asyncio.create_task(call())
            await started.wait()
            with pytest.raises(CircuitOpenError):
                await b.aadmit()  # the slot is taken
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await b.aadmit()  # the slot is free again; still half-open
            assert b.state() == "half_open"
            await b.arecord_success()

        asyncio.run(main())
        assert b.state() == "closed"

    def test_naive_purgatory_counts_cancellation_as_failure(self):
        factory = AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=60)

        async def main():
            async def call():
                async with await factory.get_breaker("svc"):
                    await asyncio.sleep(3600)

            task = asyncio.create_task(call())
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return (await factory.get_breaker("svc")).context.state

        assert asyncio.run(main()) == "opened"


class TestSharpEdge6ListenerErrors:
    def test_callback_errors_never_reach_the_caller_and_are_logged_once(self, clock, caplog):
        caplog.set_level(logging.INFO, logger=LOGGER)
        calls = []

        def bad(*args):
            calls.append(args)
            raise RuntimeError("metrics exporter exploded")

        reg = BreakerRegistry(threshold=1, open_seconds=10, clock=clock, on_transition=bad)
        b = reg.get("svc")
        b.admit()
        b.record_failure()  # closed -> open: the callback raises, we do not
        for _ in range(3):
            clock.advance(10)
            b.admit()  # open -> half_open
            b.record_failure()  # half_open -> open
        clock.advance(10)
        b.admit()
        b.record_success()  # half_open -> closed
        assert len(calls) == 9 and calls[-1] == ("svc", "half_open", "closed")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "on_transition" in errors[0].getMessage()
        assert errors[0].exc_info is not None

    def test_naive_purgatory_listener_error_replaces_user_error(self):
        factory = SyncCircuitBreakerFactory(default_threshold=1)

        def hook(*args):
            raise RuntimeError("listener")

        factory.add_listener(hook)
        with pytest.raises(RuntimeError, match="listener"):
            with factory.get_breaker("svc"):
                raise ValueError("the user's error")


def test_naive_purgatory_sync_redis_uow_is_broken():
    """Edge 7: purgatory's sync Redis repository holds an asyncio client."""
    from purgatory import SyncRedisUnitOfWork

    uow = SyncRedisUnitOfWork("redis://127.0.0.1:1/0")
    assert type(uow.contexts.redis).__module__.startswith("redis.asyncio")


def test_happy_path_is_cheap(clock):
    """Closed, in memory: no event objects, no message bus, no lock; one Python call each."""
    reg = BreakerRegistry(clock=clock)
    b = reg.get("svc")
    fail(b, 1)
    b.admit()
    b.record_success()  # back to a clean closed breaker
    calls = []

    def profiler(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)
        elif event == "c_call":
            calls.append(arg.__name__)

    sys.setprofile(profiler)
    try:
        for _ in range(10):
            b.admit()
            b.record_success()
    finally:
        sys.setprofile(None)
    assert calls.count("admit") == 10 and calls.count("record_success") == 10
    assert len(calls) <= 21  # the two methods and sys.setprofile itself: nothing else


# --------------------------------------------------------------------------
# Redis storage (edge 7 and sharing)


@pytest.fixture(scope="module")
def redis_peer():
    with RedisPeer() as peer:
        yield peer


@pytest.fixture
def redis_url(redis_peer):
    import redis

    client = redis.Redis.from_url(redis_peer.url)
    client.flushdb()
    client.close()
    return redis_peer.url


def make_redis_registry(url, clock, **kw):
    kw.setdefault("threshold", 3)
    kw.setdefault("open_seconds", 10)
    return BreakerRegistry(storage_url=url, clock=clock, **kw)


def test_redis_sync_shared_between_registries(redis_url, clock):
    import redis

    events_a, events_b = [], []
    a = make_redis_registry(redis_url, clock, on_transition=lambda *t: events_a.append(t))
    b = make_redis_registry(redis_url, clock, on_transition=lambda *t: events_b.append(t))
    fail(a.get("svc"), 2)
    fail(b.get("svc"), 1)  # counts add up across registries
    assert rejected(a.get("svc"))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stored = client.hgetall(KEY_PREFIX + "svc")
    assert stored["state"] == "open" and stored["failures"] == "3"
    assert type(a._sync_client).__module__ == "redis.client"  # a real sync client

    clock.advance(10.1)  # a hair more: registries' epoch offsets differ by microseconds
    a.get("svc").admit()  # the one half-open trial, shared
    assert rejected(b.get("svc"))
    a.get("svc").record_success()
    b.get("svc").admit()
    b.get("svc").record_success()
    assert client.exists(KEY_PREFIX + "svc") == 0  # closed and clean: no key
    assert events_a == [("svc", "closed", "open"), ("svc", "open", "half_open"), ("svc", "half_open", "closed")]
    assert events_b[0] == ("svc", "closed", "open")
    client.close()
    a.close()
    b.close()


def test_redis_counts_stay_exact_under_threads_and_registries(redis_url, clock):
    import redis

    registries = [make_redis_registry(redis_url, clock, threshold=10**9) for _ in range(2)]
    n_threads, per_thread = 4, 40
    barrier = threading.Barrier(n_threads)

    def worker(i):
        b = registries[i % 2].get("svc")
        barrier.wait()
        for _ in range(per_thread):
            b.admit()
            b.record_failure()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hget(KEY_PREFIX + "svc", "failures") == str(n_threads * per_thread)
    client.close()
    for reg in registries:
        reg.close()


def test_redis_async_shared_and_interoperates_with_sync(redis_url, clock):
    a = make_redis_registry(redis_url, clock)
    b = make_redis_registry(redis_url, clock)

    async def main():
        ab = a.get("svc")
        for _ in range(3):
            await ab.aadmit()
            await ab.arecord_failure()
        with pytest.raises(CircuitOpenError):
            await b.get("svc").aadmit()
        clock.advance(10.1)  # a hair more: registries' epoch offsets differ by microseconds
        await ab.aadmit()
        with pytest.raises(CircuitOpenError):
            await b.get("svc").aadmit()
        await ab.arelease()  # cancelled trial: slot freed in Redis
        await b.get("svc").aadmit()
        await b.get("svc").arecord_failure()  # trial failed: open again
        assert type(a._async_clients[asyncio.get_running_loop()]).__module__.startswith("redis.asyncio")
        await a.aclose()
        await b.aclose()

    asyncio.run(main())
    assert rejected(a.get("svc"))  # sync path sees what the async path wrote


def test_redis_shared_across_processes(redis_url):
    child = textwrap.dedent(
        f"""
        from otel_integration.breaker import BreakerRegistry
        reg = BreakerRegistry(threshold=3, open_seconds=30, storage_url={redis_url!r})
        b = reg.get("svc")
        for _ in range(3):
            b.admit()
            b.record_failure()
        print(b.state())
        """
    )
    parent = BreakerRegistry(threshold=3, open_seconds=30, storage_url=redis_url)
    assert parent.get("svc").state() == "closed"
    parent.get("svc").admit()
    parent.get("svc").record_success()
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "open"
    with pytest.raises(CircuitOpenError) as info:
        parent.get("svc").admit()
    import time

    assert time.time() < info.value.retry_at <= time.time() + 30
    assert parent.get("svc").state() == "open"
    parent.close()


def _warnings(caplog):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_redis_killed_mid_test_sync_falls_back_to_memory(clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    errors = []
    with RedisPeer(password="hunter2") as peer:
        assert ":hunter2@" in peer.url
        reg = make_redis_registry(peer.url, clock, on_storage_error=errors.append)
        b = reg.get("svc")
        fail(b, 2)  # stored in Redis
        assert _warnings(caplog) == []
        peer.stop(kill=True)
        b.admit()  # Redis is gone: memory state (the last state seen), no exception
        b.record_failure()
        assert b.state() == "open"  # the 3rd failure opens it in memory
        for _ in range(10):
            assert rejected(b)
        assert errors == ["svc"]  # once: later calls skip Redis during the backoff
        assert reg.storage_degraded
        clock.advance(6)  # backoff over: Redis is tried again, still down
        assert rejected(b)
        assert errors == ["svc", "svc"]
        clock.advance(4)
        b.admit()  # open_seconds passed on the memory state: half-open trial
        b.record_success()
        assert b.state() == "closed"
        reg.close()
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "hunter2" not in message and f"redis://:***@127.0.0.1:{peer.port}/0" in message


def test_redis_outage_and_recovery(clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    errors = []
    with RedisPeer() as peer:
        reg = make_redis_registry(peer.url, clock, on_storage_error=errors.append)
        other = make_redis_registry(peer.url, clock)
        b = reg.get("svc")
        peer.stop(kill=True)
        for _ in range(20):
            b.admit()
            b.record_success()
        assert errors == ["svc"]
        clock.advance(5)
        b.admit()  # retried, failed again: one more storage error, no new warning
        b.record_success()
        assert errors == ["svc", "svc"]
        assert len(_warnings(caplog)) == 1
        peer.start()
        clock.advance(5)
        fail(other.get("svc"), 3)  # another process opens it in Redis
        assert rejected(b)  # back on shared state
        assert not reg.storage_degraded
        reg.close()
        other.close()


def test_redis_killed_mid_test_async(clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    errors = []
    with RedisPeer() as peer:
        reg = make_redis_registry(peer.url, clock, on_storage_error=errors.append)

        async def main():
            b = reg.get("svc")
            await b.aadmit()
            await b.arecord_failure()
            peer.stop(kill=True)
            for _ in range(2):
                await b.aadmit()
                await b.arecord_failure()
            with pytest.raises(CircuitOpenError):
                await b.aadmit()
            assert errors == ["svc"]
            await reg.aclose()

        asyncio.run(main())
    assert len(_warnings(caplog)) == 1


def test_unreachable_redis_at_start_masks_password(clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    port = free_port()  # nothing listens there
    reg = make_redis_registry(f"redis://:s3cret@127.0.0.1:{port}/0", clock)
    b = reg.get("svc")
    fail(b, 3)
    assert rejected(b)
    [warning] = _warnings(caplog)
    assert "s3cret" not in warning.getMessage() and f"redis://:***@127.0.0.1:{port}/0" in warning.getMessage()
