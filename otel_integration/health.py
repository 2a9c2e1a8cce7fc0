"""Dependency health: the health endpoint, latency statistics and active probes.

The endpoint (``OTEL_INTEGRATION_HEALTH_PATH``, e.g. ``/healthz``; served by
the server middleware only when set) answers::

    {"status": "healthy" | "degraded" | "unhealthy",
     "dependencies": {
       "extract": {"status": "healthy", "breaker": "closed",
                   "latency_ms": {"last": 12.3, "p95": 20.1},
                   "last_error_type": null}}}

- a dependency is ``unhealthy`` when its circuit breaker is open or its active
  probe fails, ``degraded`` when its breaker is half-open, else ``healthy``;
- the service is ``unhealthy`` per ``OTEL_INTEGRATION_HEALTH_UNHEALTHY_WHEN``
  (``all_open``: every dependency is unhealthy; ``any_open``: one is;
  ``never``), else ``degraded`` when any dependency is not healthy;
- HTTP 200 for healthy and degraded, 503 for unhealthy.

Dependencies listed: every logical name of ``OTEL_INTEGRATION_SERVICES``,
every probed name, and every downstream called so far (bounded by
``OTEL_INTEGRATION_MAX_DOWNSTREAMS``).

Latency and last error come from the CLIENT spans of the calls (one per
attempt; a span processor keeps the last `WINDOW` durations per downstream),
so they are only as complete as sampling lets them be.

Active probes (``OTEL_INTEGRATION_HEALTH_PROBES=extract=http://extract:8081/healthz``)
run in a background thread at most once per ``OTEL_INTEGRATION_HEALTH_PROBE_TTL``,
never on the caller's thread; only the very first call to a probed downstream
waits, at most `FIRST_RESULT_WAIT` seconds, for the first result. While a
probe fails (no answer within `PROBE_TIMEOUT`, or a status other than 2xx/3xx),
calls to that downstream fail fast with `DownstreamUnhealthyError`, and the
``http.client.dependency.health`` gauge is 0 (1 when it passes).
"""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import json
import math
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
import httpx
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.http import redact_url

from otel_integration.errors import DownstreamUnhealthyError, qualified_name
from otel_integration.layer import Downstream, ResilienceLayer
from otel_integration.telemetry import SCOPE
from otel_integration.tracing import HTTPX_SCOPE, PEER_SERVICE

WINDOW = 64  # latencies kept per downstream
PROBE_TIMEOUT = 2.0
FIRST_RESULT_WAIT = 0.5
_STATE_ATTRIBUTE = "_otel_integration_health"


@dataclass
class DependencyStats:
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last_error_type: str | None = None
    last_error_at: float | None = None

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


class Probe:
    """One downstream's active probe: cached result, refreshed in the background."""

    def __init__(
        self,
        name: str,
        url: str,
        ttl: float,
        on_result: Callable[[Probe], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self.url = url
        self.ttl = ttl
        self.healthy: bool | None = None
        self.checked_at = 0.0
        self.error: str | None = None
        self._on_result = on_result
        self._lock = threading.Lock()
        self._running = False
        self._first = threading.Event()

    def refresh(self) -> None:
        """Start a background check if the cached result is older than the TTL."""
        with self._lock:
            if self._running:
                return
            if self.healthy is not None and self._clock() - self.checked_at < self.ttl:
                return
            self._running = True
        thread = threading.Thread(target=self._run, name=f"otel-integration-probe:{self.name}", daemon=True)
        thread.start()

    def status(self, wait: float = 0.0) -> bool | None:
        """The cached result (refreshing it in the background when stale); None if unknown."""
        self.refresh()
        if self.healthy is None and wait > 0:
            self._first.wait(wait)
        return self.healthy

    def _run(self) -> None:
        try:
            healthy, error = check(self.url)
        except Exception as exc:  # noqa: BLE001 - a probe must never crash its thread silently
            healthy, error = False, type(exc).__name__
        with self._lock:
            self.healthy, self.error = healthy, error
            self.checked_at = self._clock()
            self._running = False
        self._first.set()
        try:
            self._on_result(self)
        except Exception:  # noqa: BLE001
            pass


_pending_request: contextvars.ContextVar[httpx.Request | None] = contextvars.ContextVar(
    "otel_integration_pending_request", default=None
)


def _record_rejection(
    layer: ResilienceLayer, downstream: Downstream, request: httpx.Request | None, error: BaseException
) -> None:
    """A CLIENT span (ERROR) for a call failed fast by a failing probe: no I/O happened."""
    method = request.method if request is not None else "HTTP"
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "server.address": downstream.host,
        "server.port": downstream.port,
        "error.type": qualified_name(type(error)),
    }
    if request is not None:
        attributes["url.full"] = redact_url(str(request.url)) or ""
        request_id = request.headers.get(layer.settings.request_id_header)
        if request_id:
            attributes["http.request.header." + layer.settings.request_id_header.lower()] = (request_id,)
    if downstream.peer_service:
        attributes[PEER_SERVICE] = downstream.peer_service
    span = layer.tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)
    span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def check(url: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str | None]:
    """GET `url` with the standard library (no instrumentation, no retries, no breaker)."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or "", parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", path, headers={"User-Agent": "otel-integration-probe"})
        response = connection.getresponse()
        response.read(64 * 1024)
        if 200 <= response.status < 400:
            return True, None
        return False, str(response.status)
    except (OSError, http.client.HTTPException) as exc:
        return False, type(exc).__name__
    finally:
        connection.close()


class HealthState:
    """Per resilience layer: statistics per downstream and the probes."""

    def __init__(self, layer: ResilienceLayer) -> None:
        self._layer = weakref.ref(layer)
        self.settings = layer.settings
        self._lock = threading.Lock()
        self._stats: OrderedDict[str, DependencyStats] = OrderedDict()
        self.probes = {
            name: Probe(name, url, layer.settings.health_probe_ttl, self._probe_result, layer.clock)
            for name, url in layer.settings.health_probes.items()
        }

    # -- statistics ---------------------------------------------------------------

    def record(self, key: str, latency_ms: float, error_type: str | None) -> None:
        with self._lock:
            stats = self._stats.get(key)
            if stats is None:
                stats = self._stats[key] = DependencyStats()
                while len(self._stats) > self.settings.max_downstreams:
                    self._stats.popitem(last=False)
            else:
                self._stats.move_to_end(key)
            stats.record(latency_ms, error_type)

    def stats(self, key: str) -> DependencyStats | None:
        with self._lock:
            return self._stats.get(key)

    # -- probes --------------------------------------------------------------------

    def _probe_result(self, probe: Probe) -> None:
        layer = self._layer()
        if layer is None:
            return
        layer.instruments.dependency_health.set(1 if probe.healthy else 0, layer._attributes_for_key(probe.name))

    def probe_for(self, downstream: Downstream) -> Probe | None:
        if not self.probes:
            return None
        return self.probes.get(downstream.key) or (
            self.probes.get(downstream.peer_service) if downstream.peer_service else None
        )

    def gate(self, downstream: Downstream) -> None:
        """Admission gate: fail the attempt fast while the downstream's probe fails."""
        probe = self.probe_for(downstream)
        if probe is None:
            return
        wait = 0.0 if _in_event_loop() else FIRST_RESULT_WAIT
        if probe.status(wait=wait) is not False:
            return
        request = _pending_request.get()
        error = DownstreamUnhealthyError(downstream=downstream.key, request=request)
        layer = self._layer()
        if layer is not None:
            _record_rejection(layer, downstream, request, error)
        raise error

    @staticmethod
    def remember_request(request: httpx.Request, downstream: Downstream) -> None:
        """before-send hook: the gate has no request argument; it finds it here."""
        _pending_request.set(request)

    # -- the report --------------------------------------------------------------------

    def report(self) -> tuple[int, dict[str, Any]]:
        layer = self._layer()
        breakers = layer.breaker_snapshot() if layer is not None else {}
        with self._lock:
            stat_keys = list(self._stats)
        names = list(dict.fromkeys([*self.settings.services, *self.probes, *breakers, *stat_keys]))
        dependencies: dict[str, Any] = {}
        for name in names:
            breaker = breakers[name].state if name in breakers else "closed"
            stats = self.stats(name)
            entry: dict[str, Any] = {
                "status": "healthy",
                "breaker": breaker,
                "latency_ms": stats.latency() if stats else {"last": None, "p95": None},
                "last_error_type": stats.last_error_type if stats else None,
            }
            probe = self.probes.get(name)
            if probe is not None:
                result = probe.status()
                entry["probe"] = {None: "unknown", True: "passing", False: "failing"}[result]
            if breaker == "open" or entry.get("probe") == "failing":
                entry["status"] = "unhealthy"
            elif breaker == "half_open":
                entry["status"] = "degraded"
            dependencies[name] = entry
        return _overall(self.settings.health_unhealthy_when, dependencies)


def _overall(rule: str, dependencies: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    statuses = [d["status"] for d in dependencies.values()]
    unhealthy = [s == "unhealthy" for s in statuses]
    if (rule == "any_open" and any(unhealthy)) or (rule == "all_open" and unhealthy and all(unhealthy)):
        status = "unhealthy"
    elif any(s != "healthy" for s in statuses):
        status = "degraded"
    else:
        status = "healthy"
    return (503 if status == "unhealthy" else 200), {"status": status, "dependencies": dependencies}


class HealthSpanProcessor(SpanProcessor):
    """Feeds latency and errors of finished CLIENT spans into a `HealthState`."""

    def __init__(self, state: HealthState, layer: ResilienceLayer) -> None:
        self._state = weakref.ref(state)
        self._names_by_address = {address: name for name, address in layer.settings.services.items()}

    def on_end(self, span: ReadableSpan) -> None:
        if span.kind is not SpanKind.CLIENT:
            return
        scope = span.instrumentation_scope
        if scope is None or scope.name not in (HTTPX_SCOPE, SCOPE):
            return
        state = self._state()
        if state is None:
            return
        attributes = span.attributes or {}
        key = attributes.get(PEER_SERVICE)
        if not key:
            host, port = attributes.get("server.address"), attributes.get("server.port")
            if not host:
                return
            if port is None:
                scheme = str(attributes.get("url.scheme") or attributes.get("url.full", "http:")).split(":")[0]
                port = 443 if scheme == "https" else 80
            address = f"{host}:{port}"
            key = self._names_by_address.get(address.lower(), address)
        error_type = attributes.get("error.type")
        latency_ms = max(0, (span.end_time or 0) - (span.start_time or 0)) / 1e6
        state.record(str(key), latency_ms, str(error_type) if error_type else None)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def attach(layer: ResilienceLayer) -> HealthState:
    """Give `layer` its health state (once): statistics, probes, fail-fast hook."""
    state = getattr(layer, _STATE_ATTRIBUTE, None)
    if state is not None:
        return state
    state = HealthState(layer)
    setattr(layer, _STATE_ATTRIBUTE, state)
    provider = getattr(layer, "tracer_provider", None)
    if hasattr(provider, "add_span_processor"):
        provider.add_span_processor(HealthSpanProcessor(state, layer))  # type: ignore[union-attr]
    if state.probes:
        layer.add_before_send(state.remember_request)
        layer.add_admission_gate(state.gate)
        for probe in state.probes.values():
            probe.refresh()  # first results arrive before the first calls, usually
    return state


def current_state() -> HealthState | None:
    from otel_integration.instrumentation import OtelIntegrationInstrumentor

    layer = OtelIntegrationInstrumentor.layer
    if layer is None:
        return None
    return attach(layer)


def report() -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of the health endpoint for the current layer."""
    state = current_state()
    if state is None:
        return 200, {"status": "healthy", "dependencies": {}}
    return state.report()


def _body() -> tuple[int, bytes]:
    status, document = report()
    return status, json.dumps(document, separators=(",", ":")).encode()


async def asgi_endpoint(scope: dict, receive: Callable, send: Callable) -> None:
    """The health endpoint as an ASGI app (mount it yourself, or let the middleware serve it)."""
    status, body = _body()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


def wsgi_endpoint(environ: dict, start_response: Callable) -> list[bytes]:
    status, body = _body()
    reason = "OK" if status == 200 else "Service Unavailable"
    start_response(
        f"{status} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
    )
    return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]
