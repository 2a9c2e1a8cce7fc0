"""Shared state of the resilience layer: one per instrumentation.

`ResilienceLayer` owns what outlives a single call: the settings, the
per-downstream state (breaker, retry budget, metric attributes), the metric
instruments and the tracer. Per-downstream state lives in a bounded LRU map
(`OTEL_INTEGRATION_MAX_DOWNSTREAMS`), so a client that talks to many hosts
cannot grow memory without bound.

A downstream is keyed by its logical name when `OTEL_INTEGRATION_SERVICES`
names it, else by ``host:port``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from opentelemetry import metrics, trace

from otel_integration.breaker import BreakerRegistry
from otel_integration.budget import RetryBudget
from otel_integration.settings import Settings
from otel_integration.telemetry import BREAKER_STATE_ATTRIBUTE, BREAKER_STATE_VALUES, SCOPE, Instruments
from otel_integration.tracing import request_id_attribute

BeforeSend = Callable[[httpx.Request, "Downstream"], None]
# Runs before every attempt is admitted; raising (e.g. DownstreamUnhealthyError) fails it fast, without I/O.
AdmissionGate = Callable[["Downstream"], None]


@dataclass
class Downstream:
    key: str  # logical name or host:port
    host: str
    port: int
    peer_service: str | None
    attributes: dict[str, str | int]  # metric attributes, built once
    settings: Settings
    breaker: object  # otel_integration.breaker.Breaker
    budget: RetryBudget


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
        # Every time-based decision (breaker open windows, budget refills, probe
        # TTLs) reads this clock, so tests can move time instead of sleeping.
        self.clock = clock
        # Kept so later parts (health statistics) can add span processors to it.
        self.tracer_provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self.instruments = Instruments(meter_provider)
        self._names_by_address = {address: name for name, address in settings.services.items()}
        self._downstreams: OrderedDict[tuple[str, int], Downstream] = OrderedDict()
        self._lock = threading.Lock()
        self.before_send_hooks: list[BeforeSend] = []
        self._admission_gates: list[AdmissionGate] = []
        # Services whose breaker_* settings are overridden get a registry of their own.
        self.service_breakers: dict[str, BreakerRegistry] = {}
        self.prepare_failure_logged = False  # see transport._Call.begin
        self.request_id_attribute = request_id_attribute(settings.request_id_header)
        self.breakers = BreakerRegistry(
            threshold=settings.breaker_threshold,
            open_seconds=settings.breaker_open_seconds,
            half_open_calls=settings.breaker_half_open_calls,
            storage_url=None if settings.breaker_storage == "memory" else settings.breaker_storage,
            max_breakers=settings.max_downstreams,
            on_transition=self._on_transition,
            on_storage_error=self._on_storage_error,
            clock=clock,
        )

    def downstream(self, host: str, port: int) -> Downstream:
        address = (host, port)
        # The hit path takes no lock: OrderedDict's get and move_to_end are
        # single C calls under the GIL; a concurrent eviction at worst makes
        # move_to_end miss (KeyError), and the entry is then created again.
        found = self._downstreams.get(address)
        if found is not None:
            try:
                self._downstreams.move_to_end(address)
            except KeyError:
                pass
            return found
        created = self._new_downstream(host, port)
        with self._lock:
            found = self._downstreams.setdefault(address, created)
            self._downstreams.move_to_end(address)
            while len(self._downstreams) > self.settings.max_downstreams:
                self._downstreams.popitem(last=False)
            return found

    def _new_downstream(self, host: str, port: int) -> Downstream:
        name = self._names_by_address.get(f"{host.lower()}:{port}")
        key = name or f"{host}:{port}"
        attributes: dict[str, str | int] = {"server.address": host, "server.port": port}
        if name:
            attributes["peer.service"] = name
        settings = self.settings.for_service(name)
        breaker: object = self._registry_for(name, settings).get(key)
        if self._admission_gates:
            breaker = _GatedBreaker(breaker, self._admission_gates)
        downstream = Downstream(
            key=key,
            host=host,
            port=port,
            peer_service=name,
            attributes=attributes,
            settings=settings,
            breaker=breaker,
            budget=RetryBudget(
                ratio=settings.retry_budget_ratio,
                min_per_second=settings.retry_budget_min_per_second,
                clock=self.clock,
            ),
        )
        if isinstance(breaker, _GatedBreaker):
            breaker.downstream_state = downstream
        return downstream

    def _registry_for(self, name: str | None, settings: Settings) -> BreakerRegistry:
        """The shared registry, or a service's own one when its breaker settings are overridden."""
        shape = (settings.breaker_threshold, settings.breaker_open_seconds, settings.breaker_half_open_calls)
        if name is None or shape == (self.breakers.threshold, self.breakers.open_seconds, self.breakers.half_open_calls):
            return self.breakers
        with self._lock:
            registry = self.service_breakers.get(name)
            if registry is None:
                registry = self.service_breakers[name] = BreakerRegistry(
                    threshold=settings.breaker_threshold,
                    open_seconds=settings.breaker_open_seconds,
                    half_open_calls=settings.breaker_half_open_calls,
                    storage_url=None if settings.breaker_storage == "memory" else settings.breaker_storage,
                    max_breakers=1,
                    on_transition=self._on_transition,
                    on_storage_error=self._on_storage_error,
                    clock=self.clock,
                )
            return registry

    def breaker_snapshot(self) -> dict[str, object]:
        """Every breaker's status, services with overridden breaker settings included."""
        snapshot: dict[str, object] = dict(self.breakers.snapshot())
        for registry in list(self.service_breakers.values()):
            snapshot.update(registry.snapshot())
        return snapshot

    def add_admission_gate(self, gate: AdmissionGate) -> None:
        """Run `gate(downstream)` before every attempt is admitted (downstreams created from now on).

        Raising fails the attempt fast like an open breaker; the active health
        probes use it. Downstreams without gates get the plain breaker.
        """
        self._admission_gates.append(gate)

    def add_before_send(self, hook: BeforeSend) -> None:
        """Run `hook(request, downstream)` once per logical call, before the first attempt."""
        self.before_send_hooks.append(hook)

    def before_send(self, request: httpx.Request, downstream: Downstream) -> None:
        for hook in self.before_send_hooks:
            hook(request, downstream)

    def _attributes_for_key(self, key: str) -> dict[str, str | int]:
        host, _, port = key.rpartition(":")
        if host and port.isdigit():
            return {"server.address": host, "server.port": int(port)}
        address = self.settings.services.get(key, "")
        host, _, port = address.rpartition(":")
        return {"server.address": host, "server.port": int(port or 0), "peer.service": key}

    def _on_transition(self, key: str, old: str, new: str) -> None:
        attributes = self._attributes_for_key(key)
        self.instruments.breaker_state.set(BREAKER_STATE_VALUES[new], attributes)
        self.instruments.breaker_transitions.add(1, {**attributes, BREAKER_STATE_ATTRIBUTE: new})

    def _on_storage_error(self, key: str) -> None:
        self.instruments.breaker_storage_errors.add(1, self._attributes_for_key(key))


class _GatedBreaker:
    """A downstream's breaker with admission gates in front of `admit`/`aadmit`."""

    def __init__(self, breaker: object, gates: list[AdmissionGate]) -> None:
        self._breaker = breaker
        self._gates = gates
        self.downstream_state: Downstream | None = None

    def _check(self) -> None:
        if self.downstream_state is not None:
            for gate in self._gates:
                gate(self.downstream_state)

    def admit(self) -> None:
        self._check()
        self._breaker.admit()  # type: ignore[attr-defined]

    async def aadmit(self) -> None:
        self._check()
        await self._breaker.aadmit()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._breaker, name)
