"""Per-downstream state, in one place: one bounded LRU owns it all.

A downstream is keyed by its logical name when ``OTEL_INTEGRATION_SERVICES``
names its address, else by ``host:port``. Its `Downstream` holds everything
that outlives a call: the settings (with the service's overrides), the
circuit breaker, the retry budget, the active probe, the latency window of
the health endpoint and the retry log's rate limit.

At most ``OTEL_INTEGRATION_MAX_DOWNSTREAMS`` are kept; the least recently
used is evicted, and with it everything above: the breaker state gauge and
the health endpoint read this map, so an evicted downstream stops being
reported (with memory storage its breaker starts closed if it comes back;
with Redis its shared state is read again).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator

import httpx

from otel_integration import _forks as forks
from otel_integration._client.breaker import Breaker, OnTransition
from otel_integration._client.breaker.shared import RedisSync
from otel_integration._client.budget import RetryBudget
from otel_integration._client.probes import Probe
from otel_integration._settings import Settings

WINDOW = 64  # attempt latencies kept per downstream for the health endpoint


class AttemptStats:
    """The recent attempts of one downstream, as the health endpoint reports them."""

    __slots__ = ("latencies_ms", "last_error_type", "last_error_at")

    def __init__(self) -> None:
        self.latencies_ms: deque[float] = deque(maxlen=WINDOW)
        self.last_error_type: str | None = None
        self.last_error_at: float | None = None  # epoch seconds

    def record(self, latency_ms: float, error_type: str | None) -> None:
        self.latencies_ms.append(latency_ms)
        if error_type:
            self.last_error_type = error_type
            self.last_error_at = time.time()

    def latency(self) -> dict[str, float | None]:
        values = list(self.latencies_ms)
        if not values:
            return {"last": None, "p95": None}
        ordered = sorted(values)
        p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
        return {"last": round(values[-1], 1), "p95": round(p95, 1)}



def address(url: httpx.URL) -> tuple[str, int]:
    """The host and port a request to `url` goes to: the scheme's default port filled in."""
    return url.host, url.port or (443 if url.scheme == "https" else 80)

class Downstream:
    """Everything this process keeps about one downstream."""

    __slots__ = (
        "key", "host", "port", "peer_service", "attributes", "settings", "breaker", "budget", "probe",
        "stats", "retry_log_at", "retries_unlogged", "__weakref__",
    )

    def __init__(
        self,
        key: str,
        host: str,
        port: int,
        peer_service: str | None,
        settings: Settings,
        breaker: Breaker,
        budget: RetryBudget,
        probe: Probe | None,
    ) -> None:
        self.key = key
        self.host = host
        self.port = port
        self.peer_service = peer_service
        # Metric attributes, built once (semantic conventions; peer.service for named ones).
        self.attributes: dict[str, str | int] = {"server.address": host, "server.port": port}
        if peer_service:
            self.attributes["peer.service"] = peer_service
        self.settings = settings
        self.breaker = breaker
        self.budget = budget
        self.probe = probe
        self.stats = AttemptStats()
        self.retry_log_at: float | None = None  # when the last retry line was logged (clock)
        self.retries_unlogged = 0


class Downstreams:
    """The bounded LRU of `Downstream` state."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        to_epoch: Callable[[float], float] = lambda at: at,
        on_transition: OnTransition | None = None,
        shared: RedisSync | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._to_epoch = to_epoch
        self._on_transition = on_transition
        self._shared = shared
        self._names_by_address = {address: name for name, address in settings.services.items()}
        self.probes = {
            name: Probe(name, url, settings.health_probe_ttl, clock=clock)
            for name, url in settings.health_probes.items()
        }
        self._entries: OrderedDict[tuple[str, int], Downstream] = OrderedDict()
        self._lock = threading.Lock()
        forks.reset_in_child(self)

    def get(self, host: str, port: int) -> Downstream:
        address = (host, port)
        # The hit path takes no lock: OrderedDict's get and move_to_end are single
        # C calls under the GIL; a concurrent eviction at worst makes move_to_end
        # miss (KeyError), and the entry is then created again.
        found = self._entries.get(address)
        if found is not None:
            try:
                self._entries.move_to_end(address)
            except KeyError:
                pass
            return found
        created = self._new(host, port)
        with self._lock:
            found = self._entries.setdefault(address, created)
            self._entries.move_to_end(address)
            while len(self._entries) > self.settings.max_downstreams:
                self._entries.popitem(last=False)
            return found

    def __iter__(self) -> Iterator[Downstream]:
        """The downstreams held now, least recently used first (a copy: safe while calls go on)."""
        with self._lock:
            return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def _new(self, host: str, port: int) -> Downstream:
        name = self._names_by_address.get(f"{host.lower()}:{port}")
        key = name or f"{host}:{port}"
        settings = self.settings.for_service(name)
        breaker = Breaker(
            key,
            threshold=settings.breaker_threshold,
            open_seconds=settings.breaker_open_seconds,
            half_open_calls=settings.breaker_half_open_calls,
            clock=self._clock,
            to_epoch=self._to_epoch,
            on_transition=self._on_transition,
            shared=self._shared,
        )
        budget = RetryBudget(
            ratio=settings.retry_budget_ratio,
            min_per_second=settings.retry_budget_min_per_second,
            clock=self._clock,
        )
        probe = self.probes.get(key) or (self.probes.get(name) if name else None)
        downstream = Downstream(key, host, port, name, settings, breaker, budget, probe)
        breaker.attributes = downstream.attributes
        return downstream

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        for downstream in list(self._entries.values()):
            downstream.breaker.reset_after_fork()
            downstream.budget._after_fork()
