from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

# Read once per process by the upstream instrumentations: set before they load.
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")

import stamina  # noqa: E402
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from otel_integration._client.instrumentor import OtelIntegrationInstrumentor  # noqa: E402
from otel_integration._client import layer as layers  # noqa: E402
from otel_integration._client.layer import ResilienceLayer  # noqa: E402
from otel_integration._settings import Settings  # noqa: E402
from otel_integration._client.tracing import HTTPX_SCOPE, AttemptSpanProcessor  # noqa: E402
from otel_integration._redaction import Redactor  # noqa: E402
from otel_integration._scrubbing import Scrubber, ScrubbingSpanExporter  # noqa: E402
from tests.peers import QuickFaultServer  # noqa: E402
from tests.redis_peer import RedisPeer  # noqa: E402


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fault_server() -> Iterator[QuickFaultServer]:
    with QuickFaultServer() as server:
        yield server


@pytest.fixture
def redis_peer() -> Iterator[RedisPeer]:
    """A real redis-server of the test's own (skips without the binary, fails in CI)."""
    peer = RedisPeer()
    with peer:
        yield peer


@dataclass
class Instrumented:
    """httpx instrumented in-process, with in-memory telemetry."""

    spans_exporter: InMemorySpanExporter
    metric_reader: InMemoryMetricReader
    layer: ResilienceLayer

    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_exporter.get_finished_spans())

    def client_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind.name == "CLIENT"]

    def attempt_spans(self, port: int) -> list[ReadableSpan]:
        """The upstream CLIENT spans (one per physical attempt) to `port`, in start order."""
        spans = [
            s
            for s in self.client_spans()
            if s.instrumentation_scope.name == HTTPX_SCOPE and s.attributes.get("server.port") == port
        ]
        return sorted(spans, key=lambda s: s.start_time)

    def breaker(self, server_or_port: object) -> object:
        """The breaker of a 127.0.0.1 downstream (a FaultServer or a port)."""
        port = server_or_port if isinstance(server_or_port, int) else server_or_port.port  # type: ignore[attr-defined]
        return self.layer.downstreams.get("127.0.0.1", port).breaker

    @staticmethod
    def request_id_of(span: ReadableSpan) -> str | None:
        """The X-Request-ID recorded on a span (http.request.header.x-request-id)."""
        value = (span.attributes or {}).get("http.request.header.x-request-id")
        return value[0] if value else None

    def metric_points(self, name: str) -> list[tuple[dict, object]]:
        data = self.metric_reader.get_metrics_data()
        points = []
        for resource_metrics in data.resource_metrics if data else []:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            points.append((dict(point.attributes), point))
        return points

    def counter_total(self, name: str, **attributes: object) -> float:
        total = 0.0
        for attrs, point in self.metric_points(name):
            if all(attrs.get(k.replace("_", ".")) == v for k, v in attributes.items()):
                total += point.value  # type: ignore[attr-defined]
        return total


def reader_total(reader: InMemoryMetricReader, name: str) -> float:
    """The sum of every point of metric `name` that `reader` collects (all attributes)."""
    data = reader.get_metrics_data()
    total = 0.0
    for resource_metrics in data.resource_metrics if data else []:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    total += sum(p.value for p in metric.data.data_points)  # type: ignore[union-attr]
    return total


# Tests run with quick, deterministic-ish retries unless they override.
FAST = {
    "retry_initial_wait": 0.01,
    "retry_max_wait": 0.05,
    "retry_jitter": 0.0,
}


@pytest.fixture
def instrument() -> Iterator:
    """`instrument(**settings)` instruments httpx (upstream + ours) until the test ends."""
    active: list[tuple[OtelIntegrationInstrumentor, HTTPXClientInstrumentor]] = []

    def start(clock: object = None, **overrides: object) -> Instrumented:
        """`clock`: a FakeClock for breaker windows, budgets and probe TTLs (default: real time)."""
        settings = replace(Settings(), **{**FAST, **overrides})
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(AttemptSpanProcessor())
        # As the configurator exports: through the scrubber.
        scrubber = Scrubber(Redactor(settings.redact_query_params))
        tracer_provider.add_span_processor(SimpleSpanProcessor(ScrubbingSpanExporter(exporter, scrubber)))
        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[reader])
        upstream = HTTPXClientInstrumentor()
        upstream.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        ours = OtelIntegrationInstrumentor()
        ours.instrument(
            settings=settings,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            **({"clock": clock} if clock is not None else {}),
        )
        active.append((ours, upstream))
        layer = layers.active()
        assert layer is not None
        return Instrumented(exporter, reader, layer)

    yield start
    for ours, upstream in active:
        ours.uninstrument()
        upstream.uninstrument()


@pytest.fixture(autouse=True)
def _stamina_live() -> Iterator[None]:
    """Tests measure real retries: make sure no test leaves stamina switched off."""
    yield
    stamina.set_active(True)
    stamina.set_testing(False)


@pytest.fixture
def restore_stamina_hooks() -> Iterator[None]:
    """For tests that set stamina's (global) retry hooks: back to stamina's defaults afterwards."""
    yield
    import stamina.instrumentation

    stamina.instrumentation.set_on_retry_hooks(None)
