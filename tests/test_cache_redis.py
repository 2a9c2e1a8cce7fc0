"""The response cache in a real redis-server: shared by two layers (two processes or replicas).

Skipped on a laptop without ``redis-server``; a failure in CI (``CI`` set).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import httpx
import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from otel_integration._client.cache import KEY_PREFIX
from otel_integration._client.instrumentor import instrument_client
from otel_integration._client.layer import ResilienceLayer
from otel_integration._settings import Settings
from tests.conftest import FAST

pytestmark = pytest.mark.slow


@pytest.fixture
def layers(redis_peer):
    made: list[ResilienceLayer] = []

    def make(**overrides: object) -> ResilienceLayer:
        layer = ResilienceLayer(
            replace(Settings(), **{**FAST, "cache": redis_peer.url, **overrides}),
            tracer_provider=TracerProvider(),
            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
        )
        made.append(layer)
        return layer

    yield make
    for layer in made:
        layer.close()


def test_a_response_stored_by_one_layer_answers_the_other(layers, fault_server):
    a, b = layers(), layers()
    url = f"{fault_server.url}/cache/shared?cc=max-age%3D60"
    with instrument_client(httpx.Client(), a) as client_a, instrument_client(httpx.Client(), b) as client_b:
        assert client_a.get(url).json() == {"key": "shared", "served": 1}
        hit = client_b.get(url)
    assert hit.json() == {"key": "shared", "served": 1}
    assert hit.extensions["otel_integration.cache"] == {"outcome": "hit"}
    assert len(fault_server.requests) == 1


def test_async_clients_and_stale_if_error_through_redis(layers, fault_server):
    layer = layers(breaker_threshold=1)
    url = f"{fault_server.url}/cache/async?cc=max-age%3D0&fail_after=1"

    async def main() -> list[httpx.Response]:
        async with instrument_client(httpx.AsyncClient(), layer) as client:
            return [await client.get(url) for _ in range(3)]

    first, after_retries, refused = asyncio.run(main())
    assert first.json() == after_retries.json() == refused.json() == {"key": "async", "served": 1}
    assert [r.extensions["otel_integration.cache"].get("error") for r in (after_retries, refused)] == [
        "503", "CircuitOpenError",
    ]
    assert "age" in refused.headers


def test_an_entry_is_kept_for_its_freshness_plus_max_stale(layers, fault_server, redis_peer):
    layer = layers(cache_max_stale=500.0)
    with instrument_client(httpx.Client(), layer) as client:
        client.get(f"{fault_server.url}/cache/kept?cc=max-age%3D100")
    server = redis.Redis.from_url(redis_peer.url)
    try:
        (index,) = server.keys(f"{KEY_PREFIX}:idx:*")
        ((_, expires_at),) = server.zrange(index, 0, -1, withscores=True)
    finally:
        server.close()
    assert 590 <= expires_at - time.time() <= 600  # 100 s fresh + 500 s stale-if-error


def test_under_trio_async_clients_go_uncached_with_one_warning(layers, fault_server, caplog):
    import trio

    layer = layers()
    url = f"{fault_server.url}/cache/trio?cc=max-age%3D60"

    async def main() -> list[int]:
        async with instrument_client(httpx.AsyncClient(), layer) as client:
            return [(await client.get(url)).status_code for _ in range(2)]

    with caplog.at_level(logging.WARNING, logger="otel_integration._client.cache"):
        assert trio.run(main) == [200, 200]
    assert len(fault_server.requests) == 2
    assert len([r for r in caplog.records if "needs asyncio" in r.getMessage()]) == 1
