"""A circuit breaker shared through a real redis-server by two resilience layers.

Layer A is the instrumented one (the `instrument` fixture: every httpx client
goes through it); layer B is a second, independent `ResilienceLayer` (as in
another process or replica) used through hand-made transports, which the
instrumentation leaves alone. Both use the same ``breaker_storage`` URL.

Skipped on a laptop without ``redis-server``; a failure in CI (``CI`` set).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from otel_integration.breaker import KEY_PREFIX
from otel_integration.errors import CircuitOpenError
from otel_integration.layer import ResilienceLayer
from otel_integration.settings import Settings
from otel_integration.transport import AsyncResilientTransport, ResilientTransport
from tests.conftest import FAST
from tests.peers import QuickFaultServer
from tests.redis_peer import RedisPeer

pytestmark = pytest.mark.slow

REJECTIONS = "http.client.circuit_breaker.rejections"
STORAGE_ERRORS = "http.client.circuit_breaker.storage_errors"


@pytest.fixture
def redis_peer():
    peer = RedisPeer()  # skips without redis-server, fails in CI
    with peer:
        yield peer


@pytest.fixture
def servers():
    with QuickFaultServer() as first, QuickFaultServer() as second:
        yield first, second


class Layer:
    """A second resilience layer with its own telemetry, reached through hand-made transports."""

    def __init__(self, clock: Any = time.monotonic, **overrides: object) -> None:
        self.reader = InMemoryMetricReader()
        self.layer = ResilienceLayer(
            replace(Settings(), **{**FAST, **overrides}),
            tracer_provider=TracerProvider(),
            meter_provider=MeterProvider(metric_readers=[self.reader]),
            clock=clock,
        )

    def client(self) -> httpx.Client:
        return httpx.Client(transport=ResilientTransport(httpx.HTTPTransport(), self.layer))

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=AsyncResilientTransport(httpx.AsyncHTTPTransport(), self.layer))

    def counter(self, name: str) -> float:
        data = self.reader.get_metrics_data()
        total = 0.0
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        total += sum(p.value for p in metric.data.data_points)
        return total

    def close(self) -> None:
        self.layer.breakers.close()


@pytest.fixture
def second_layer():
    made: list[Layer] = []

    def make(**overrides: object) -> Layer:
        layer = Layer(**overrides)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        layer.close()


def test_failures_through_one_layer_open_the_breaker_seen_by_another(
    instrument, second_layer, redis_peer, servers
):
    server, _ = servers
    shared = {"breaker_storage": redis_peer.url, "breaker_threshold": 2, "breaker_open_seconds": 30.0}
    a = instrument(**shared)
    b = second_layer(**shared)

    with httpx.Client() as client_a:  # instrumented: layer A
        assert client_a.get(f"{server.url}/status/500").status_code == 500
        assert client_a.get(f"{server.url}/status/500").status_code == 500
    stored = redis.Redis.from_url(redis_peer.url, decode_responses=True).hgetall(
        f"{KEY_PREFIX}127.0.0.1:{server.port}"
    )
    assert stored.get("state") == "open"

    before = len(server.requests)
    with b.client() as client_b:
        with pytest.raises(CircuitOpenError) as caught:
            client_b.get(f"{server.url}/ok")
    assert f"127.0.0.1:{server.port}" in str(caught.value)

    async def async_b() -> None:
        async with b.async_client() as client:
            with pytest.raises(CircuitOpenError):
                await client.get(f"{server.url}/ok")

    asyncio.run(async_b())
    assert len(server.requests) == before  # layer B sent nothing
    assert b.counter(REJECTIONS) == 2
    assert a.counter_total(REJECTIONS) == 0


def test_breaker_closed_by_one_layer_is_closed_for_the_other(instrument, second_layer, redis_peer, servers, clock):
    server, _ = servers
    # Both layers read one fake clock (Redis stores epoch seconds derived from it).
    shared = {"breaker_storage": redis_peer.url, "breaker_threshold": 2, "breaker_open_seconds": 30, "clock": clock}
    instrument(**shared)
    b = second_layer(**shared)
    with httpx.Client() as client_a, b.client() as client_b:
        client_a.get(f"{server.url}/status/500")
        client_a.get(f"{server.url}/status/500")
        with pytest.raises(CircuitOpenError):
            client_b.get(f"{server.url}/ok")
        clock.advance(31)
        assert client_b.get(f"{server.url}/ok").status_code == 200  # B's half-open trial closes it
        assert client_a.get(f"{server.url}/ok").status_code == 200
    assert len(server.requests_to("/ok")) == 2


def test_redis_killed_mid_test_calls_still_work(instrument, second_layer, redis_peer, servers, clock):
    server, other = servers
    shared = {"breaker_storage": redis_peer.url, "breaker_threshold": 2, "breaker_open_seconds": 30, "clock": clock}
    a = instrument(**shared)
    b = second_layer(**shared)
    with httpx.Client() as client_a, b.client() as client_b:
        client_a.get(f"{server.url}/status/500")
        client_a.get(f"{server.url}/status/500")
        with pytest.raises(CircuitOpenError):
            client_b.get(f"{server.url}/ok")

        redis_peer.stop(kill=True)  # a crash: no goodbye

        started = time.monotonic()
        # A healthy downstream keeps working through both layers, sync and async.
        assert client_a.get(f"{other.url}/ok").status_code == 200
        assert client_b.get(f"{other.url}/flaky/k?fail=1").status_code == 200  # retries too

        async def async_b() -> int:
            async with b.async_client() as client:
                return (await client.get(f"{other.url}/ok")).status_code

        assert asyncio.run(async_b()) == 200
        assert time.monotonic() - started < 10  # no hang on the dead Redis

        # The open breaker falls back to memory and recovers on its own.
        clock.advance(31)
        assert client_b.get(f"{server.url}/ok").status_code == 200
        assert client_a.get(f"{server.url}/ok").status_code == 200
    assert len(other.requests_to("/flaky/k")) == 2
    assert a.counter_total(STORAGE_ERRORS) + b.counter(STORAGE_ERRORS) >= 1
