"""The metric instruments this distro registers, named once.

Dashboards and alert rules depend on these names, so they live in one list
(`INSTRUMENTS`) that tests and docs read instead of repeating them.
The HTTP client duration histogram (`http.client.request.duration`) comes from
the upstream httpx instrumentation and is not repeated here.

Attribute keys follow the OpenTelemetry HTTP semantic conventions
(`server.address`, `server.port`, `http.request.method`, `error.type`) and,
for logically named downstreams, `peer.service`. URL paths and request IDs are
never metric attributes: they would explode cardinality.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Counter, Observation
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

SCOPE = "otel_integration"

# Attribute keys that are ours (no semantic convention exists for them).
BREAKER_STATE_ATTRIBUTE = "circuit_breaker.state"
CACHE_OUTCOME_ATTRIBUTE = "http.client.cache.outcome"

# Values of the breaker state gauge.
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True)
class InstrumentSpec:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    unit: str
    description: str


RETRIES = InstrumentSpec(
    "http.client.retries",
    "counter",
    "{retry}",
    "Retries scheduled after a failed attempt (error.type says why).",
)
RETRY_BUDGET_EXHAUSTED = InstrumentSpec(
    "http.client.retry_budget.exhausted",
    "counter",
    "{retry}",
    "Retries not made because the downstream's retry budget was empty.",
)
BREAKER_STATE = InstrumentSpec(
    "http.client.circuit_breaker.state",
    "gauge",
    "{state}",
    "Circuit breaker state per downstream: 0 closed, 1 half-open, 2 open.",
)
BREAKER_TRANSITIONS = InstrumentSpec(
    "http.client.circuit_breaker.transitions",
    "counter",
    "{transition}",
    "Circuit breaker state changes; circuit_breaker.state is the new state.",
)
BREAKER_REJECTIONS = InstrumentSpec(
    "http.client.circuit_breaker.rejections",
    "counter",
    "{request}",
    "Calls failed fast, without network I/O, because the breaker was open.",
)
BREAKER_STORAGE_ERRORS = InstrumentSpec(
    "http.client.circuit_breaker.storage_errors",
    "counter",
    "{error}",
    "Shared breaker storage (Redis) failures; state fell back to memory.",
)
DEPENDENCY_HEALTH = InstrumentSpec(
    "http.client.dependency.health",
    "gauge",
    "{status}",
    "Result of the last active health probe per downstream: 1 healthy, 0 failing.",
)
CACHE_REQUESTS = InstrumentSpec(
    "http.client.cache.requests",
    "counter",
    "{request}",
    "GET and HEAD calls through the response cache; http.client.cache.outcome: hit, miss, stale or bypass.",
)
VALIDATION_ERRORS = InstrumentSpec(
    "http.client.response.validation_errors",
    "counter",
    "{response}",
    "Responses that otel_integration.validate() found not to match the caller's schema.",
)

INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    RETRIES,
    RETRY_BUDGET_EXHAUSTED,
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    BREAKER_REJECTIONS,
    BREAKER_STORAGE_ERRORS,
    DEPENDENCY_HEALTH,
    CACHE_REQUESTS,
    VALIDATION_ERRORS,
)

# Emitted by opentelemetry-instrumentation-httpx with stable HTTP semconv.
UPSTREAM_INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    InstrumentSpec(
        "http.client.request.duration",
        "histogram",
        "s",
        "Duration of HTTP client requests (one per physical attempt).",
    ),
)


def prometheus_name(spec: InstrumentSpec) -> str:
    """The name Prometheus gives `spec` after the collector's translation.

    Dots become underscores, a unit in braces is dropped, `s` becomes
    `_seconds`, and monotonic counters get `_total`.
    """
    name = spec.name.replace(".", "_")
    if spec.unit == "s":
        name += "_seconds"
    if spec.kind == "counter":
        name += "_total"
    return name


Observe = Callable[[CallbackOptions], Iterable[Observation]]


def _none(options: CallbackOptions) -> Iterable[Observation]:
    return ()


class Instruments:
    """The instruments, created from a meter once per instrumentation.

    The gauges are observable: `breaker_states` and `probe_results` are called
    at every collection and report the state as it is then.
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        breaker_states: Observe = _none,
        probe_results: Observe = _none,
    ) -> None:
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)

        def counter(spec: InstrumentSpec) -> Counter:
            return meter.create_counter(spec.name, unit=spec.unit, description=spec.description)

        self.retries = counter(RETRIES)
        self.retry_budget_exhausted = counter(RETRY_BUDGET_EXHAUSTED)
        self.breaker_transitions = counter(BREAKER_TRANSITIONS)
        self.breaker_rejections = counter(BREAKER_REJECTIONS)
        self.breaker_storage_errors = counter(BREAKER_STORAGE_ERRORS)
        self.cache_requests = counter(CACHE_REQUESTS)
        self.validation_errors = counter(VALIDATION_ERRORS)
        for spec, callback in ((BREAKER_STATE, breaker_states), (DEPENDENCY_HEALTH, probe_results)):
            meter.create_observable_gauge(spec.name, [callback], unit=spec.unit, description=spec.description)


class StartOnlySpanProcessor(SpanProcessor):
    """A span processor that only acts when spans start."""

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def add_clean_attributes(span: Span, attributes: dict[str, str | int | bool | tuple[str]]) -> None:
    """Add attributes that are valid by construction to a span that is starting (span processors).

    The SDK's `set_attributes` validates every value again (its sequence
    checks go through the ABCs): about 22,000 instructions for the one
    request-ID tuple, on every call and every incoming request. The values
    here are built by us (short strings, ints, bools, a tuple of one
    validated string), so they go into the span's attribute dict directly, as
    the SDK itself does when it copies clean attributes
    (`BoundedAttributes.__deepcopy__`). Whenever the span is not the SDK's as
    we know it, or a limit could apply (attribute count, value length), the
    public API decides instead.
    """
    store = getattr(span, "_attributes", None)
    if (
        type(store) is BoundedAttributes
        and not store._immutable
        and store.max_value_len is None
        and (store.maxlen is None or len(store._dict) + len(attributes) <= store.maxlen)
        and span.end_time is None
    ):
        store._dict.update(attributes)
    elif attributes:
        span.set_attributes(attributes)
