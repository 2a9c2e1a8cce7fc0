"""Per-downstream circuit breakers built on purgatory's state machine.

Every downstream (``host:port`` or logical name) gets one `Breaker` from a
`BreakerRegistry`.  The state machine itself (closed -> open after
``threshold`` consecutive failures, half-open trial, success closes, failure
reopens) is purgatory's domain model, `purgatory.domain.model.Context`, driven
directly.  This layer adds what purgatory 3.0.1 does not do safely:

1. Rejections raise a *new* `CircuitOpenError` each time.  purgatory raises
   its `OpenedState` object itself, the same instance on every rejection, so
   its ``__traceback__`` grows with every re-raise.
2. Half-open admits at most ``half_open_calls`` concurrent trial calls.
   purgatory's `HalfOpenedState` admits every caller.
3. Every state access holds a per-breaker lock (purgatory has none).
4. Transitions use the injected (monotonic) clock; purgatory reads
   ``time.time()``.  ``retry_at`` / ``opened_at`` are still *reported* in epoch
   seconds, and Redis stores epoch seconds because it is shared across hosts.
5. The verdict is the caller's: `Breaker.release` frees a call without
   counting it, so ``asyncio.CancelledError`` is never a failure (purgatory's
   context managers count any exception, cancellation included).
6. ``on_transition`` errors are caught and logged once; purgatory lets a
   listener's exception replace the user's error.
7. Redis storage works for sync code with a sync ``redis.Redis`` client
   (purgatory's `SyncRedisUnitOfWork` builds an asyncio client) and for async
   code with ``redis.asyncio``; every Redis failure falls back to in-memory
   state instead of reaching the caller.

We do not use purgatory's factories, unit of work or message bus on the call
path: one call would cost a bus round trip and several event objects.  The
`Context` subclass below keeps purgatory's states and transitions but turns its
events into plain bookkeeping (see `_Context`).

Redis storage (``storage_url="redis://host:port/db"``) keeps one hash per
downstream at ``otel_integration:breaker:<downstream>`` with fields ``state``,
``failures``, ``opened_at`` (epoch), ``trials`` and ``trial_at`` (epoch).  Updates
are read-modify-write under ``WATCH``/``MULTI`` so processes never lose each
other's transitions; a closed breaker with no failures has no key.
A closed breaker costs one ``HGETALL`` per call (``admit``), nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from purgatory.domain.model import (
    CLOSED,
    HALF_OPENED,
    OPENED,
    Context,
    HalfOpenedState,
    OpenedState,
    State,
)

from .errors import CircuitOpenError
from .settings import mask_secret_url

__all__ = ["Breaker", "BreakerRegistry", "BreakerStatus", "KEY_PREFIX"]

log = logging.getLogger(__name__)

KEY_PREFIX = "otel_integration:breaker:"

# purgatory's state names -> the names our metrics and health endpoint use.
_PUBLIC = {CLOSED: "closed", OPENED: "open", HALF_OPENED: "half_open"}
_PRIVATE = {v: k for k, v in _PUBLIC.items()}

REDIS_SOCKET_TIMEOUT = 0.25  # seconds, connect and read
REDIS_RETRY_BACKOFF = 5.0  # seconds without trying Redis after a failure
_REDIS_KEY_TTL_MIN = 3600  # seconds; a breaker key nobody touches expires
_TXN_ATTEMPTS = 64  # optimistic (WATCH) transaction attempts; each conflict means another writer progressed


class _Failure(Exception):
    """The verdict handed to purgatory's ``handle_exception``; never raised."""


_FAILURE = _Failure("failure recorded by the caller")


class _Context(Context):
    """purgatory's `Context`, with our clock and without per-call events.

    Deviations from purgatory, each on purpose:

    * `set_state` stamps ``opened_at`` with *our* clock (purgatory's
      `OpenedState` uses ``time.time()``) and records the transition in
      ``transitions`` instead of queuing a `ContextChanged` event;
    * `mark_failure` / `recover_failure` queue nothing: those events only feed
      purgatory's repository through its message bus, and we persist directly;
    * ``trials`` / ``trial_at`` count in-flight half-open trial calls, which
      purgatory does not limit at all.
    """

    def __init__(
        self,
        name: str,
        threshold: int,
        ttl: float,
        clock: Callable[[], float],
        state: str = CLOSED,
        failure_count: int = 0,
        opened_at: float | None = None,
        trials: int = 0,
        trial_at: float | None = None,
    ) -> None:
        super().__init__(name, threshold, ttl, state=state, failure_count=failure_count, opened_at=opened_at)
        self.clock = clock
        self.transitions: list[tuple[str, str]] = []
        self.trials = trials
        self.trial_at = trial_at

    def set_state(self, state: State) -> None:
        old = self._state
        if isinstance(state, OpenedState):
            state.opened_at = self.clock()
            # Keep the count that opened it, for the health endpoint.
            state.failure_count = old.failure_count or 0
        self._state = state
        self.trials = 0
        self.trial_at = None
        self.transitions.append((old.name, state.name))

    def mark_failure(self, failure_count: int) -> None:
        pass

    def recover_failure(self) -> None:
        pass

    def key(self) -> tuple[Any, ...]:
        """Everything that is persisted, to tell whether an operation changed anything."""
        st = self._state
        return (st.name, st.failure_count, st.opened_at, self.trials, self.trial_at)


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


# Decisions returned by the admission logic (no allocation on the happy path).
_ADMITTED = None


class Breaker:
    """The breaker of one downstream.  Get it from `BreakerRegistry.get`.

    Each admitted call (`admit` / `aadmit` returned) must be followed by
    exactly one of `record_success`, `record_failure` or `release`
    (or their async twins).  `guard` / `aguard` do that bookkeeping.
    """

    __slots__ = ("downstream", "_registry", "_memory", "_lock", "_ctx", "_key", "_ttl", "_half_open_calls", "__weakref__")

    def __init__(self, downstream: str, registry: BreakerRegistry) -> None:
        self.downstream = downstream
        self._registry = registry
        self._memory = registry._redis_url is None
        self._lock = threading.Lock()
        self._ttl = registry.open_seconds
        self._half_open_calls = registry.half_open_calls
        # In memory mode the state; in Redis mode the last state seen in Redis,
        # used for reporting and as the fallback while Redis is unreachable.
        self._ctx = _Context(downstream, registry.threshold, registry.open_seconds, registry._clock)
        self._key = KEY_PREFIX + downstream

    def __repr__(self) -> str:
        return f"<Breaker {self.downstream!r} state={self.state()!r}>"

    # -- the state machine steps (caller holds the lock or owns ``ctx``) ------

    def _admit_step(self, ctx: _Context) -> float | None:
        """Admit a call on ``ctx``; returns None, or the clock time to retry at."""
        st = ctx._state
        if st.name == CLOSED:
            return _ADMITTED
        now = ctx.clock()
        if st.name == OPENED:
            retry_at = st.opened_at + self._ttl  # type: ignore[operator]
            if now < retry_at:
                return retry_at
            # Our clock, not purgatory's time.time() in OpenedState.handle_new_request.
            ctx.set_state(HalfOpenedState())
        # Half-open: purgatory admits everyone; we admit ``half_open_calls``.
        if ctx.trials < self._half_open_calls:
            ctx.trials += 1
            ctx.trial_at = now
            return _ADMITTED
        # Trial slots taken.  A trial without verdict for ``open_seconds`` is
        # presumed lost (a crashed process, a caller that never reported).
        if ctx.trial_at is None or now - ctx.trial_at >= self._ttl:
            ctx.trials = 1
            ctx.trial_at = now
            return _ADMITTED
        return ctx.trial_at + self._ttl

    def _success_step(self, ctx: _Context) -> None:
        # closed: reset the count; half-open: close; open: nothing (late verdict).
        ctx.handle_end_request()

    def _failure_step(self, ctx: _Context) -> None:
        # closed: count, open at threshold; half-open: reopen; open: nothing.
        ctx.handle_exception(_FAILURE)

    def _release_step(self, ctx: _Context) -> None:
        if ctx._state.name == HALF_OPENED and ctx.trials > 0:
            ctx.trials -= 1

    # -- helpers -------------------------------------------------------------

    def _reject(self, retry_at_clock: float) -> CircuitOpenError:
        # A new exception each time (purgatory re-raises one OpenedState instance).
        return CircuitOpenError(downstream=self.downstream, retry_at=self._registry._to_epoch(retry_at_clock))

    def _run_local(self, step: Callable[[_Context], Any]) -> tuple[Any, list[tuple[str, str]]]:
        with self._lock:
            ctx = self._ctx
            result = step(ctx)
            transitions = ctx.transitions
            if transitions:
                ctx.transitions = []
        return result, transitions

    def _adopt(self, ctx: _Context, previous_name: str) -> list[tuple[str, str]]:
        """Make ``ctx`` (just read from / written to Redis) the local view."""
        transitions = ctx.transitions
        ctx.transitions = []
        with self._lock:
            seen = self._ctx._state.name
            self._ctx = ctx
        # A change made by another process, reported when we first see it.
        if seen != previous_name:
            transitions = [(seen, previous_name), *transitions]
        return transitions

    # -- public, sync --------------------------------------------------------

    def state(self) -> str:
        """"closed", "half_open" or "open" (open reads as half_open once ``open_seconds`` passed).

        A pure read of the local view, no I/O (with Redis storage: the state
        seen by this process's last call).  The transition itself (and its
        ``on_transition`` call) happens at the next `admit`.
        """
        with self._lock:
            st = self._ctx._state
            name = st.name
            if name == OPENED and self._registry._clock() >= st.opened_at + self._ttl:  # type: ignore[operator]
                name = HALF_OPENED
        return _PUBLIC[name]

    def admit(self) -> None:
        """Let a call through, or raise a new `CircuitOpenError`."""
        if self._memory:
            # Hot path, lock-free: a closed breaker admits without changing
            # anything, and a transition racing with this read just orders
            # this call before it.
            if self._ctx._state.name == CLOSED:
                return
            reg = self._registry
            with self._lock:
                ctx = self._ctx
                retry_at = self._admit_step(ctx)
                transitions = ctx.transitions
                if transitions:
                    ctx.transitions = []
        else:
            reg = self._registry
            retry_at, transitions = self._run(self._admit_step)
        if transitions:
            reg._notify(self.downstream, transitions)
        if retry_at is not _ADMITTED:
            raise self._reject(retry_at)

    def record_success(self) -> None:
        reg = self._registry
        if self._memory:
            st = self._ctx._state
            if st.name == CLOSED and not st.failure_count:
                return  # hot path, lock-free: nothing to reset (a racing failure is ordered after us)
            with self._lock:
                ctx = self._ctx
                ctx.handle_end_request()
                transitions = ctx.transitions
                ctx.transitions = []
        else:
            if self._quiet():
                return
            _, transitions = self._run(self._success_step)
        if transitions:
            reg._notify(self.downstream, transitions)

    def record_failure(self) -> None:
        if self._registry._redis_url is None:
            _, transitions = self._run_local(self._failure_step)
        else:
            _, transitions = self._run(self._failure_step)
        if transitions:
            self._registry._notify(self.downstream, transitions)

    def release(self) -> None:
        """The call ended without a verdict (cancelled, ...): free its slot, count nothing."""
        if self._registry._redis_url is None:
            with self._lock:
                self._release_step(self._ctx)
            return
        if self._ctx._state.name == CLOSED:
            return  # nothing to free (best effort: the local view is fresh from admit)
        self._run(self._release_step)

    # -- public, async -------------------------------------------------------

    async def aadmit(self) -> None:
        reg = self._registry
        if reg._redis_url is None:
            return self.admit()
        retry_at, transitions = await self._arun(self._admit_step)
        if transitions:
            reg._notify(self.downstream, transitions)
        if retry_at is not _ADMITTED:
            raise self._reject(retry_at)

    async def arecord_success(self) -> None:
        if self._registry._redis_url is None or self._quiet():
            return self.record_success()
        _, transitions = await self._arun(self._success_step)
        if transitions:
            self._registry._notify(self.downstream, transitions)

    async def arecord_failure(self) -> None:
        if self._registry._redis_url is None:
            return self.record_failure()
        _, transitions = await self._arun(self._failure_step)
        if transitions:
            self._registry._notify(self.downstream, transitions)

    async def arelease(self) -> None:
        if self._registry._redis_url is None:
            return self.release()
        if self._ctx._state.name == CLOSED:
            return
        await self._arun(self._release_step)

    # -- convenience ---------------------------------------------------------

    @contextlib.contextmanager
    def guard(self, is_failure: Callable[[BaseException], bool] = lambda exc: isinstance(exc, Exception)) -> Iterator[None]:
        """``with breaker.guard(): ...``: admit, then success / failure / release.

        An exception for which ``is_failure`` is false (by default anything that
        is not an `Exception`: cancellation, KeyboardInterrupt, ...) releases.
        """
        self.admit()
        try:
            yield
        except BaseException as exc:
            if is_failure(exc):
                self.record_failure()
            else:
                self.release()
            raise
        self.record_success()

    @contextlib.asynccontextmanager
    async def aguard(
        self, is_failure: Callable[[BaseException], bool] = lambda exc: isinstance(exc, Exception)
    ) -> AsyncIterator[None]:
        """Async `guard`; ``asyncio.CancelledError`` releases, never counts."""
        await self.aadmit()
        try:
            yield
        except BaseException as exc:
            if is_failure(exc):
                await self.arecord_failure()
            else:
                await self.arelease()
            raise
        await self.arecord_success()

    def status(self) -> BreakerStatus:
        reg = self._registry
        with self._lock:
            st = self._ctx._state
            name = st.name
            failures = st.failure_count or 0
            opened_at = st.opened_at
        retry_at = None
        if name == OPENED:
            assert opened_at is not None
            retry_at = opened_at + self._ttl
            if reg._clock() >= retry_at:
                name = HALF_OPENED
        return BreakerStatus(
            downstream=self.downstream,
            state=_PUBLIC[name],
            failure_count=failures,
            opened_at=reg._to_epoch(opened_at) if opened_at is not None else None,
            retry_at=reg._to_epoch(retry_at) if name == OPENED and retry_at is not None else None,
        )

    # -- Redis ---------------------------------------------------------------

    def _quiet(self) -> bool:
        """Closed with no failures in the view ``admit`` just read: a success changes nothing.

        Saves a Redis round trip per successful call; the price is that a
        success does not reset failures another process counted in between.
        """
        st = self._ctx._state
        return st.name == CLOSED and not st.failure_count

    def _run(self, step: Callable[[_Context], Any]) -> tuple[Any, list[tuple[str, str]]]:
        reg = self._registry
        client = reg._sync_client_if_available()
        if client is not None:
            try:
                return self._redis_txn(client, step)
            except Exception as exc:  # storage must never reach the caller
                reg._storage_failed(self.downstream, exc)
        return self._run_local(step)

    async def _arun(self, step: Callable[[_Context], Any]) -> tuple[Any, list[tuple[str, str]]]:
        reg = self._registry
        client = reg._async_client_if_available()
        if client is not None:
            try:
                return await self._aredis_txn(client, step)
            except Exception as exc:  # storage must never reach the caller
                reg._storage_failed(self.downstream, exc)
        return self._run_local(step)

    def _redis_txn(self, client: Any, step: Callable[[_Context], Any]) -> tuple[Any, list[tuple[str, str]]]:
        import redis  # only reached when a redis:// URL is configured

        reg = self._registry
        key = self._key
        # Optimistic first read without WATCH: most calls change nothing (one round trip).
        ctx = reg._decode(self.downstream, client.hgetall(key))
        previous = ctx._state.name
        before = ctx.key()
        result = step(ctx)
        if ctx.key() != before:
            for _ in range(_TXN_ATTEMPTS):
                with client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(key)
                        ctx = reg._decode(self.downstream, pipe.hgetall(key))
                        previous = ctx._state.name
                        before = ctx.key()
                        result = step(ctx)
                        if ctx.key() == before:
                            break
                        pipe.multi()
                        reg._queue_write(pipe, key, ctx)
                        pipe.execute()
                        break
                    except redis.WatchError:
                        continue
            else:
                log.debug("breaker %s: Redis contention, verdict applied locally only", self.downstream)
        reg._storage_ok()
        return result, self._adopt(ctx, previous)

    async def _aredis_txn(self, client: Any, step: Callable[[_Context], Any]) -> tuple[Any, list[tuple[str, str]]]:
        import redis

        reg = self._registry
        key = self._key
        ctx = reg._decode(self.downstream, await client.hgetall(key))
        previous = ctx._state.name
        before = ctx.key()
        result = step(ctx)
        if ctx.key() != before:
            for _ in range(_TXN_ATTEMPTS):
                async with client.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(key)
                        ctx = reg._decode(self.downstream, await pipe.hgetall(key))
                        previous = ctx._state.name
                        before = ctx.key()
                        result = step(ctx)
                        if ctx.key() == before:
                            break
                        pipe.multi()
                        reg._queue_write(pipe, key, ctx)
                        await pipe.execute()
                        break
                    except redis.WatchError:
                        continue
            else:
                log.debug("breaker %s: Redis contention, verdict applied locally only", self.downstream)
        reg._storage_ok()
        return result, self._adopt(ctx, previous)


class BreakerRegistry:
    """All breakers of a process, one per downstream, bounded by ``max_breakers``.

    The least recently used breaker is evicted past ``max_breakers``: with
    memory storage its state is lost (the downstream starts closed again);
    with Redis storage the state stays in Redis.  A caller still holding an
    evicted `Breaker` can keep using it.

    ``on_transition(downstream, old, new)`` is called outside any lock, after
    the change; with Redis storage a change made by another process is
    reported when this process first sees it.  Its exceptions are logged once
    and never propagate.  ``on_storage_error(downstream)`` is called once per
    failed Redis operation.
    """

    def __init__(
        self,
        *,
        threshold: int = 5,
        open_seconds: float = 30.0,
        half_open_calls: int = 1,
        storage_url: str | None = None,
        max_breakers: int = 1000,
        on_transition: Callable[[str, str, str], None] | None = None,
        on_storage_error: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        if open_seconds <= 0:
            raise ValueError("open_seconds must be > 0")
        if half_open_calls < 1:
            raise ValueError("half_open_calls must be >= 1")
        if max_breakers < 1:
            raise ValueError("max_breakers must be >= 1")
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.half_open_calls = half_open_calls
        self.max_breakers = max_breakers
        self._clock = clock
        self._on_transition = on_transition
        self._on_storage_error = on_storage_error
        self._callback_error_logged = False
        # Epoch seconds are derived from the clock: exact wall time with the
        # default clock, and they move with a fake clock in tests.
        if clock is time.monotonic:
            self._epoch_now: Callable[[], float] = time.time
        else:
            offset = time.time() - clock()
            self._epoch_now = lambda: clock() + offset
        self._lock = threading.Lock()
        self._breakers: OrderedDict[str, Breaker] = OrderedDict()

        self._redis_url: str | None = None
        self._masked_url = ""
        self._redis: Any = None  # the redis module, imported lazily
        self._sync_client: Any = None
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._storage_lock = threading.Lock()
        self._storage_down = False
        self._retry_storage_at = 0.0
        self._key_ttl = int(max(_REDIS_KEY_TTL_MIN, 10 * open_seconds))
        if storage_url and storage_url != "memory":
            self._configure_redis(storage_url)

    # -- registry ------------------------------------------------------------

    def get(self, downstream: str) -> Breaker:
        with self._lock:
            breaker = self._breakers.get(downstream)
            if breaker is not None:
                self._breakers.move_to_end(downstream)
                return breaker
            breaker = self._breakers[downstream] = Breaker(downstream, self)
            if len(self._breakers) > self.max_breakers:
                evicted, _ = self._breakers.popitem(last=False)
                log.debug("circuit breaker of %s evicted (max_breakers=%d)", evicted, self.max_breakers)
            return breaker

    def __len__(self) -> int:
        return len(self._breakers)

    def snapshot(self) -> dict[str, BreakerStatus]:
        """Status of every breaker, from this process's view (no I/O)."""
        with self._lock:
            breakers = list(self._breakers.values())
        return {b.downstream: b.status() for b in breakers}

    @property
    def storage(self) -> str:
        """"redis" or "memory" (what is configured; see `storage_degraded`)."""
        return "memory" if self._redis_url is None else "redis"

    @property
    def storage_degraded(self) -> bool:
        return self._storage_down

    def close(self) -> None:
        client, self._sync_client = self._sync_client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        # Async clients are bound to their loops; without one we can only drop them.
        self._async_clients = weakref.WeakKeyDictionary()

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._async_clients.pop(loop, None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
        self.close()

    # -- callbacks -----------------------------------------------------------

    def _notify(self, downstream: str, transitions: list[tuple[str, str]]) -> None:
        callback = self._on_transition
        for old, new in transitions:
            old_name, new_name = _PUBLIC[old], _PUBLIC[new]
            log.info("circuit breaker of %s: %s -> %s", downstream, old_name, new_name)
            if callback is None:
                continue
            try:
                callback(downstream, old_name, new_name)
            except Exception:
                # purgatory would let this replace the caller's own error.
                if not self._callback_error_logged:
                    self._callback_error_logged = True
                    log.exception("on_transition callback failed (logged once; later failures are ignored)")

    # -- time ----------------------------------------------------------------

    def _to_epoch(self, at_clock: float) -> float:
        return at_clock + (self._epoch_now() - self._clock())

    # -- Redis ---------------------------------------------------------------

    def _configure_redis(self, url: str) -> None:
        scheme = url.split(":", 1)[0].lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported breaker storage URL {mask_secret_url(url)!r}: use 'memory' or redis://host:port/db")
        self._masked_url = mask_secret_url(url)
        try:
            import redis
            import redis.asyncio  # noqa: F401
        except ImportError:
            log.error(
                "circuit breaker storage %s needs the redis client (pip install 'otel-integration[redis]'); "
                "breakers use in-memory state",
                self._masked_url,
            )
            return
        self._redis = redis
        self._redis_url = url

    def _client_kwargs(self, retry_cls: Any) -> dict[str, Any]:
        from redis.backoff import NoBackoff

        return {
            "socket_timeout": REDIS_SOCKET_TIMEOUT,
            "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
            "decode_responses": True,
            "retry": retry_cls(NoBackoff(), 0),  # we fall back instead of retrying
        }

    def _storage_available(self) -> bool:
        return not self._storage_down or self._clock() >= self._retry_storage_at

    def _sync_client_if_available(self) -> Any:
        if not self._storage_available():
            return None
        client = self._sync_client
        if client is None:
            from redis.retry import Retry

            with self._storage_lock:
                client = self._sync_client
                if client is None:
                    client = self._sync_client = self._redis.Redis.from_url(
                        self._redis_url, **self._client_kwargs(Retry)
                    )
        return client

    def _async_client_if_available(self) -> Any:
        if not self._storage_available():
            return None
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            from redis.asyncio.retry import Retry

            client = self._redis.asyncio.Redis.from_url(self._redis_url, **self._client_kwargs(Retry))
            self._async_clients[loop] = client
        return client

    def _storage_failed(self, downstream: str, exc: BaseException) -> None:
        with self._storage_lock:
            first = not self._storage_down
            self._storage_down = True
            self._retry_storage_at = self._clock() + REDIS_RETRY_BACKOFF
        if first:
            log.warning(
                "circuit breaker storage %s failed (%s: %s); breakers use in-memory state, "
                "retrying Redis every %gs",
                self._masked_url,
                type(exc).__name__,
                exc,
                REDIS_RETRY_BACKOFF,
            )
        else:
            log.debug("circuit breaker storage %s still failing: %r", self._masked_url, exc)
        if self._on_storage_error is not None:
            try:
                self._on_storage_error(downstream)
            except Exception:
                log.debug("on_storage_error callback failed", exc_info=True)

    def _storage_ok(self) -> None:
        if self._storage_down:
            with self._storage_lock:
                was_down, self._storage_down = self._storage_down, False
            if was_down:
                log.warning("circuit breaker storage %s reachable again; using shared state", self._masked_url)

    def _decode(self, downstream: str, raw: dict[str, str]) -> _Context:
        """A `_Context` (clock units) from a Redis hash (epoch seconds)."""
        ctx = _Context(downstream, self.threshold, self.open_seconds, self._clock)
        if not raw:
            return ctx
        shift = self._clock() - self._epoch_now()  # epoch -> clock
        state = _PRIVATE.get(raw.get("state", "closed"), CLOSED)
        opened_at = raw.get("opened_at")
        trial_at = raw.get("trial_at")
        return _Context(
            downstream,
            self.threshold,
            self.open_seconds,
            self._clock,
            state=state,
            failure_count=int(raw.get("failures") or 0),
            opened_at=float(opened_at) + shift if opened_at else (self._clock() if state == OPENED else None),
            trials=int(raw.get("trials") or 0),
            trial_at=float(trial_at) + shift if trial_at else None,
        )

    def _queue_write(self, pipe: Any, key: str, ctx: _Context) -> None:
        st = ctx._state
        pipe.delete(key)
        if st.name == CLOSED and not st.failure_count:
            return  # no key means closed with no failures
        shift = self._epoch_now() - self._clock()  # clock -> epoch
        mapping = {
            "state": _PUBLIC[st.name],
            "failures": st.failure_count or 0,
            "trials": ctx.trials,
        }
        if st.opened_at is not None:
            mapping["opened_at"] = repr(st.opened_at + shift)
        if ctx.trial_at is not None:
            mapping["trial_at"] = repr(ctx.trial_at + shift)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self._key_ttl)
