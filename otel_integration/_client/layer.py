"""The resilience layer: what outlives a call, for one instrumentation.

`ResilienceLayer` owns the settings, the clock, the tracer and metric
instruments, the per-downstream state (`Downstreams`), the optional Redis
sync of breaker state, and the hooks run before each call is sent (auth
forwarding). The transports and the call core only read it.

The breaker state and probe gauges are observable: they report each
downstream's state as it is when the metrics are collected, time-based
transitions included, and only for the downstreams the LRU still holds.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import httpx
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from otel_integration import _auth as auth
from otel_integration._client.attempt_metrics import FailedAttempts
from otel_integration._client.breaker import Breaker
from otel_integration._client.breaker.shared import RedisSync
from otel_integration._client.downstreams import Downstream, Downstreams
from otel_integration._client.headers import CorrelationHeader
from otel_integration._client.retry_log import STAMINA_LOG_FILTER
from otel_integration._client.tracing import request_id_attribute
from otel_integration._redaction import Redactor
from otel_integration._settings import Settings, cache_available, redis_client_available
from otel_integration._telemetry import BREAKER_STATE_ATTRIBUTE, BREAKER_STATE_VALUES, SCOPE, Instruments

if TYPE_CHECKING:
    from otel_integration._client.cache import ResponseCache

_logger = logging.getLogger(__name__)

BeforeSend = Callable[[httpx.Request, Downstream], None]


class ResilienceLayer:
    def __init__(
        self,
        settings: Settings,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        # Every time-based decision (breaker windows, budget windows, probe TTLs,
        # deadlines) reads this clock, so tests can move time instead of sleeping.
        self.clock = clock
        offset = time.time() - clock()
        self.to_epoch: Callable[[float], float] = lambda at: at + offset
        self.tracer_provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        this = weakref.ref(self)
        self.instruments = Instruments(
            meter_provider,
            breaker_states=lambda options: _observe(this, ResilienceLayer._breaker_states, options),
            probe_results=lambda options: _observe(this, ResilienceLayer._probe_results, options),
        )
        self.failed_attempts = FailedAttempts(meter_provider)
        self.shared: RedisSync | None = None
        if settings.breaker_storage != "memory":
            if redis_client_available():
                self.shared = RedisSync(
                    settings.breaker_storage, clock=clock, to_epoch=self.to_epoch, on_error=self._storage_error
                )
            else:  # `check` reports it too; here the layer runs on with memory state
                _logger.error(
                    "otel-integration: OTEL_INTEGRATION_BREAKER_STORAGE needs the redis client "
                    "(pip install 'otel-integration[redis]'); breakers keep their state in memory"
                )
        self.downstreams = Downstreams(
            settings, clock=clock, to_epoch=self.to_epoch, on_transition=self._on_transition, shared=self.shared
        )
        # The response cache (OTEL_INTEGRATION_CACHE), in front of the resilient transports.
        self.cache: ResponseCache | None = None
        if settings.cache != "off":
            self.cache = self._cache(settings)
        self.before_send_hooks: list[BeforeSend] = []
        if settings.auth_forward_to:
            self.before_send_hooks.append(auth.forward_authorization)
        # The health endpoint's latency window costs a little on every attempt: only when served.
        self.keeps_stats = bool(settings.health_path or settings.health_probes)
        self.request_id_attribute = request_id_attribute(settings.request_id_header)
        self.request_id_header = CorrelationHeader(settings.request_id_header)
        self.redactor = Redactor(settings.redact_query_params)  # for error messages (spans: the exporter's)
        self.closed = False
        self._logged: set[str] = set()
        self._logged_lock = threading.Lock()
        for probe in self.downstreams.probes.values():
            probe.refresh()  # the first results arrive before the first calls, usually
        # stamina logs a WARNING per retry; ours are logged by the call core, rate-bounded.
        logging.getLogger("stamina").addFilter(STAMINA_LOG_FILTER)

    def log_once(self, what: str) -> bool:
        """True the first time `what` happens in this layer: for problems logged once, not per call."""
        with self._logged_lock:
            if what in self._logged:
                return False
            self._logged.add(what)
            return True

    def _cache(self, settings: Settings) -> ResponseCache | None:
        needs_redis = settings.cache.startswith(("redis", "rediss", "unix"))
        if not cache_available() or (needs_redis and not redis_client_available()):
            # `check` reports it too; here the layer runs on without a cache
            _logger.error(
                "otel-integration: OTEL_INTEGRATION_CACHE needs pip install 'otel-integration[cache%s]'; "
                "responses are not cached", ",redis" if needs_redis else "",
            )
            return None
        from otel_integration._client.cache import ResponseCache  # imports hishel only when a storage is made

        return ResponseCache(settings, self.downstreams, self.instruments, self.tracer)

    def close(self) -> None:
        self.closed = True
        if self.shared is not None:
            self.shared.close()
        if self.cache is not None:
            self.cache.close()

    # --- telemetry ------------------------------------------------------------------------------------

    def _on_transition(self, breaker: Breaker, old: str, new: str) -> None:
        self.instruments.breaker_transitions.add(1, {**breaker.attributes, BREAKER_STATE_ATTRIBUTE: new})

    def _storage_error(self) -> None:
        self.instruments.breaker_storage_errors.add(1, {"circuit_breaker.storage": "redis"})

    def _breaker_states(self) -> Iterable[Observation]:
        for downstream in self.downstreams:
            state = downstream.breaker.state()
            yield Observation(BREAKER_STATE_VALUES[state], downstream.attributes)

    def _probe_results(self) -> Iterable[Observation]:
        for name, probe in self.downstreams.probes.items():
            if probe.healthy is not None:
                address = self.settings.services.get(name, "")
                host, _, port = address.rpartition(":")
                attributes: dict[str, str | int] = {"peer.service": name}
                if host and port.isdigit():
                    attributes.update({"server.address": host, "server.port": int(port)})
                yield Observation(1 if probe.healthy else 0, attributes)


def _observe(
    layer_ref: weakref.ref[ResilienceLayer],
    read: Callable[[ResilienceLayer], Iterable[Observation]],
    options: CallbackOptions,
) -> Iterable[Observation]:
    """An observable gauge's callback: nothing once its layer is closed or gone."""
    layer = layer_ref()
    if layer is None or layer.closed:
        return []
    try:
        return list(read(layer))
    except Exception:  # noqa: BLE001 - a metrics collection must never fail because of us
        _logger.debug("otel-integration: observing a gauge failed", exc_info=True)
        return []


# The layer of the active instrumentation (set by the instrumentor), and the one
# hand-made transports use when there is none.
_active: ResilienceLayer | None = None
_default: ResilienceLayer | None = None
_default_lock = threading.Lock()


def set_active(layer: ResilienceLayer | None) -> None:
    global _active
    _active = layer


def active() -> ResilienceLayer | None:
    return _active


def current() -> ResilienceLayer:
    """The instrumentation's layer, else one built once from the environment (global providers)."""
    global _default
    if _active is not None:
        return _active
    with _default_lock:
        if _default is None:
            _default = ResilienceLayer(Settings.from_env())
        return _default
