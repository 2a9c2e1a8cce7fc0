"""Breaker state shared through Redis, kept off every call's path.

Each process decides on its own local breakers (`Breaker`), at memory speed.
One background thread per resilience layer (`RedisSync`) reconciles them
with Redis:

- **push**: failures counted and transitions decided since the last push go
  to Redis in one atomic script per breaker (`_PUSH`). Failures add up across
  processes, so N processes together open a breaker at ``threshold`` failures.
  A transition is written only if nobody changed the shared state since this
  process last saw it (its version), else the other process's state wins;
- **pull**: every `INTERVAL` seconds one ``GET`` of a global version counter
  tells whether any breaker changed; if so, the known breakers are read back
  and adopted (a new generation: permits of the old state are stale).

So another process's transition reaches this one within about `INTERVAL` plus
a Redis round trip, and a call never waits for Redis: a slow Redis delays
only the sync, a dead one leaves each process with its local state (one
warning, the storage-error counter, a retry every `RETRY_BACKOFF` seconds).

Half-open trials are decided locally: each process lets at most
``half_open_calls`` trials through, and the first verdict pushed decides the
shared state.

Redis layout: one hash per downstream at ``otel_integration:breaker:<key>``
(``state``, ``failures``, ``opened_at`` in epoch seconds, ``version``), expiring
after `KEY_TTL_MIN` seconds (or ten open windows) without writes, and the
counter ``otel_integration:breaker:_version``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from otel_integration import _forks as forks
from otel_integration._settings import mask_secret_url

if TYPE_CHECKING:
    from otel_integration._client.breaker import Breaker

_logger = logging.getLogger(__name__)

KEY_PREFIX = "otel_integration:breaker:"
VERSION_KEY = KEY_PREFIX + "_version"
INTERVAL = 0.5  # seconds between pulls
MIN_GAP = 0.05  # seconds between two rounds woken by pending verdicts
SOCKET_TIMEOUT = 1.0  # seconds; only the sync thread waits on it
RETRY_BACKOFF = 5.0  # seconds between attempts while Redis fails
KEY_TTL_MIN = 3600

# KEYS: breaker hash, version counter. ARGV: now (epoch), reset (0/1), failures,
# transition ("", "open", "closed"), opened_at (epoch or ""), base version,
# threshold, key ttl. Returns {state, failures, opened_at, version}.
_PUSH = """
local h = redis.call('HGETALL', KEYS[1])
local s = {}
for i = 1, #h, 2 do s[h[i]] = h[i + 1] end
local state = s.state or 'closed'
local failures = tonumber(s.failures or '0')
local opened_at = s.opened_at or ''
local version = tonumber(s.version or '0')
local transition = ARGV[4]
local changed = false
if transition ~= '' and tonumber(ARGV[6]) == version then
  if transition == 'open' then
    state, opened_at = 'open', ARGV[5]
  else
    state, failures, opened_at = 'closed', 0, ''
  end
  changed = true
elseif transition == '' and state == 'closed' then
  if ARGV[2] == '1' then failures = 0 end
  failures = failures + tonumber(ARGV[3])
  if failures >= tonumber(ARGV[7]) then
    state, opened_at, changed = 'open', ARGV[1], true
  end
end
if changed then version = redis.call('INCR', KEYS[2]) end
redis.call('HSET', KEYS[1], 'state', state, 'failures', failures, 'opened_at', opened_at, 'version', version)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
return {state, tostring(failures), opened_at, tostring(version)}
"""


class RedisSync:
    """The background reconciler of one layer's breakers with one Redis."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float],
        to_epoch: Callable[[float], float],
        on_error: Callable[[], None] | None = None,
        interval: float = INTERVAL,
        key_ttl: int = KEY_TTL_MIN,
    ) -> None:
        self.url = url
        self.masked_url = mask_secret_url(url)
        self._clock = clock
        self._to_epoch = to_epoch
        self._on_error = on_error
        self.interval = interval
        self.key_ttl = key_ttl
        self._breakers: weakref.WeakSet[Breaker] = weakref.WeakSet()
        self._fresh: weakref.WeakSet[Breaker] = weakref.WeakSet()  # tracked, not read yet
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._client: Any = None
        self._push: Any = None
        self._seen_version: int | None = None
        self.degraded = False  # Redis failed at the last attempt
        self.rounds = 0  # completed sync rounds (tests wait on it)
        forks.reset_in_child(self)

    # --- called on the call path: never blocks on Redis ------------------------------------------

    def track(self, breaker: Breaker) -> None:
        """A new breaker: its shared state is read at the next round (within `INTERVAL`)."""
        self._breakers.add(breaker)
        self._fresh.add(breaker)
        self._start()

    def wake(self) -> None:
        """A breaker has something to push: sync soon rather than at the next interval."""
        with self._wake:
            self._wake.notify()

    # --- lifecycle -----------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is not None or self._stopped:
            return
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="otel-integration-breaker-sync", daemon=True)
                self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2 * SOCKET_TIMEOUT + 1)
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass

    def _after_fork(self) -> None:
        # The thread does not exist in the child; the client's sockets belong to the parent.
        self._wake = threading.Condition()
        self._thread = None
        self._client = None
        self._push = None
        if self._breakers:
            self._start()

    # --- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        retry_at = 0.0
        while True:
            with self._wake:
                if self._stopped:
                    return
                self._wake.wait(self.interval)
                if self._stopped:
                    return
            if self._clock() < retry_at:
                continue
            try:
                self.sync_once()
            except Exception as error:  # noqa: BLE001 - storage must never reach a caller
                retry_at = self._clock() + RETRY_BACKOFF
                self._failed(error)
            else:
                retry_at = 0.0
                if self.degraded:
                    self.degraded = False
                    _logger.warning(
                        "otel-integration: circuit breaker storage %s reachable again; breakers are shared",
                        self.masked_url,
                    )
            self.rounds += 1
            time.sleep(MIN_GAP)  # many verdicts in a burst: one round per gap, not one per verdict

    def sync_once(self) -> None:
        """One round: push what is pending, pull what changed. Raises on a Redis error."""
        client = self._connect()
        taken: list[tuple[Breaker, tuple[bool, int, str | None, float | None, int]]] = []
        for breaker in list(self._breakers):
            pending = breaker.take_pending()
            if pending is not None:
                taken.append((breaker, pending))
        try:
            for breaker, pending in taken:
                reset, failures, transition, opened_at, base = pending
                result = self._push(
                    keys=[KEY_PREFIX + breaker.key, VERSION_KEY],
                    args=[
                        repr(self._to_epoch(self._clock())),
                        "1" if reset else "0",
                        failures,
                        transition or "",
                        "" if opened_at is None else repr(self._to_epoch(opened_at)),
                        base,
                        breaker.threshold,
                        max(self.key_ttl, int(10 * breaker.open_seconds)),
                    ],
                    client=client,
                )
                self._adopt(breaker, result)
        except Exception:
            for breaker, pending in taken:
                breaker.restore_pending(pending)
            raise
        version = int(client.get(VERSION_KEY) or 0)
        fresh = list(self._fresh)
        if version != self._seen_version or fresh:
            breakers = list(self._breakers) if version != self._seen_version else fresh
            for breaker in fresh:
                self._fresh.discard(breaker)
            with client.pipeline(transaction=False) as pipe:
                for breaker in breakers:
                    pipe.hmget(KEY_PREFIX + breaker.key, "state", "failures", "opened_at", "version")
                rows = pipe.execute()
            for breaker, row in zip(breakers, rows):
                self._adopt(breaker, row)
            self._seen_version = version

    def _adopt(self, breaker: Breaker, row: list[Any]) -> None:
        state, failures, opened_at, version = row
        if state is None:  # no key: closed, nothing counted, version 0
            state, failures, opened_at, version = "closed", "0", "", "0"
        at = float(opened_at) - self._to_epoch(0.0) if opened_at else None  # epoch -> our clock
        breaker.adopt(str(state), int(failures or 0), at, int(version or 0))

    def _connect(self) -> Any:
        if self._client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                decode_responses=True,
                retry=Retry(NoBackoff(), 0),  # the round is retried later instead
            )
            self._push = self._client.register_script(_PUSH)
        return self._client

    def _failed(self, error: BaseException) -> None:
        if not self.degraded:
            self.degraded = True
            _logger.warning(
                "otel-integration: circuit breaker storage %s failed (%s); breakers keep their local state "
                "and retry Redis every %g s",
                self.masked_url, type(error).__name__, RETRY_BACKOFF,
            )
        else:
            _logger.debug("circuit breaker storage %s still failing: %r", self.masked_url, error)
        if self._on_error is not None:
            try:
                self._on_error()
            except Exception:  # noqa: BLE001
                _logger.debug("on_error callback failed", exc_info=True)
