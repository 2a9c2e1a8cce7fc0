"""A slow or frozen Redis behind ``OTEL_INTEGRATION_BREAKER_STORAGE`` does not slow calls.

The issue's bug (pre-v2): behind a 100 ms proxy every call took the Redis
round trip (p50 from 11 ms to 111 ms); only above the 0.25 s timeout did
calls fall back. Now the breaker decides in memory and a background thread
syncs it with Redis (`breaker.shared`).

Nothing here measures wall time. A `RedisProxy` (tests/redis_peer.py) in
front of a real redis-server counts the commands clients send it:

- frozen (the proxy holds every byte: Redis accepts and never answers), 20
  calls all complete, at most 5 commands reached the proxy meanwhile, and
  what the calls decided reaches Redis once it answers again;
- slow (50 ms per chunk each way: the issue's 100 ms round trip), 40
  successful calls complete while fewer than 20 commands were sent: a call
  that took the round trip would send one each.

Sync and async twins. Real HTTP servers on 127.0.0.1, real redis-server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from otel_integration import AsyncResilientTransport, ResilientTransport
from otel_integration._client.breaker.shared import KEY_PREFIX, RETRY_BACKOFF
from otel_integration._client.layer import ResilienceLayer
from otel_integration._settings import Settings
from tests.conftest import FakeClock
from tests.peers import QuickFaultServer, wait_until
from tests.redis_peer import RedisPeer, RedisProxy

pytestmark = pytest.mark.slow

CALLS = 20
SLOW_CALLS = 40


@pytest.fixture
def servers() -> Iterator[tuple[QuickFaultServer, QuickFaultServer]]:
    with QuickFaultServer() as first, QuickFaultServer() as second:
        yield first, second


def layer_behind(proxy: RedisProxy, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> ResilienceLayer:
    """A layer configured as a user would: the environment names the proxy as breaker storage."""
    monkeypatch.setenv("OTEL_INTEGRATION_BREAKER_STORAGE", proxy.url)
    monkeypatch.setenv("OTEL_INTEGRATION_BREAKER_THRESHOLD", "1000")  # failures to share, never open
    monkeypatch.setenv("OTEL_INTEGRATION_RETRY_ATTEMPTS", "1")
    settings = Settings.from_env()
    assert settings.breaker_storage == proxy.url
    return ResilienceLayer(settings, tracer_provider=TracerProvider(), meter_provider=MeterProvider(), clock=clock)


def stored_failures(peer: RedisPeer, server: QuickFaultServer) -> int:
    """The failures Redis holds for `server`, read from the server itself (not through the proxy)."""
    client = redis.Redis.from_url(peer.url, decode_responses=True)
    try:
        return int(client.hget(f"{KEY_PREFIX}127.0.0.1:{server.port}", "failures") or 0)
    finally:
        client.close()


def call_all(kind: str, layer: ResilienceLayer, urls: list[str]) -> list[int]:
    """GET every URL in turn through the layer: the status codes."""
    if kind == "sync":
        with httpx.Client(transport=ResilientTransport(httpx.HTTPTransport(), layer)) as client:
            return [client.get(url).status_code for url in urls]

    async def main() -> list[int]:
        async with httpx.AsyncClient(transport=AsyncResilientTransport(httpx.AsyncHTTPTransport(), layer)) as client:
            return [(await client.get(url)).status_code for url in urls]

    return asyncio.run(main())


def in_background(kind: str, layer: ResilienceLayer, urls: list[str]) -> dict[str, Any]:
    """`call_all` on another thread: the test thread keeps the deadline."""
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["statuses"] = call_all(kind, layer, urls)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            done["error"] = error

    threading.Thread(target=run, daemon=True).start()
    return done


def the_calls(server: QuickFaultServer, other: QuickFaultServer) -> tuple[list[str], list[int]]:
    """Successes (the first resets the shared count), some to a downstream new to the layer (a breaker
    whose shared state is to be read), then failures to share (each wakes the sync thread)."""
    urls = [f"{server.url}/ok"] * 4 + [f"{other.url}/ok"] * 4 + [f"{server.url}/status/500"] * (CALLS - 8)
    return urls, [500 if "/status/" in url else 200 for url in urls]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_call_completes_while_redis_is_frozen(kind, redis_peer, servers, monkeypatch, clock):
    server, other = servers
    with RedisProxy(redis_peer.port) as proxy:
        layer = layer_behind(proxy, monkeypatch, clock)
        try:
            # The storage is live through the proxy: a failure reaches Redis.
            assert call_all(kind, layer, [f"{server.url}/status/500"]) == [500]
            wait_until(lambda: stored_failures(redis_peer, server) == 1, what="the first failure shared")

            proxy.pause()
            received = proxy.received
            urls, expected = the_calls(server, other)
            done = in_background(kind, layer, urls)
            wait_until(lambda: done, timeout=30, what=f"{CALLS} calls while Redis is frozen")
            assert "error" not in done, done.get("error")
            assert done["statuses"] == expected
            # Still frozen: no call waited for Redis. A call on Redis's path sends at least one command
            # each (20); the sync thread's round is stuck on its first one (1 here).
            assert proxy.paused
            assert proxy.received - received <= CALLS // 4, proxy.received - received
            assert stored_failures(redis_peer, server) == 1  # nothing got through

            # Once Redis answers again, what the calls decided is shared.
            proxy.resume()
            clock.advance(RETRY_BACKOFF + 1)  # the sync thread's wait after a failed round (our clock)
            failed = expected.count(500)
            wait_until(lambda: stored_failures(redis_peer, server) == failed, what="the failures of the freeze shared")
        finally:
            layer.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_slow_redis_adds_no_round_trip_to_calls(kind, redis_peer, servers, monkeypatch, clock):
    """The issue's case: 100 ms of round trip (below the 0.25 s the pre-v2 breaker waited before falling back)."""
    server, other = servers
    with RedisProxy(redis_peer.port, delay=0.05) as proxy:
        layer = layer_behind(proxy, monkeypatch, clock)
        try:
            assert call_all(kind, layer, [f"{server.url}/status/500"]) == [500]
            wait_until(lambda: stored_failures(redis_peer, server) == 1, what="the first failure shared")

            received = proxy.received
            urls = [f"{server.url}/ok", f"{other.url}/ok"] * (SLOW_CALLS // 2)
            assert call_all(kind, layer, urls) == [200] * SLOW_CALLS
            # A call on Redis's path sends at least one command each (40); the sync thread pulls
            # once per 0.5 s and pushes what the calls changed (one reset, one new breaker).
            sent = proxy.received - received
            assert sent < SLOW_CALLS // 2, sent
            wait_until(lambda: stored_failures(redis_peer, server) == 0, what="the reset shared through the slow proxy")
        finally:
            layer.close()
