"""A half-open trial cancelled by an anyio cancel scope, with the breaker shared through a real redis-server.

The issue's bug (pre-v2): under anyio cancel scopes the async Redis
``arelease()`` of the trial was cancelled with the call, leaving ``trials=1``
in Redis, so no trial was admitted until ``open_seconds`` had passed again.
Now trials are local to the process (`breaker.model`) and Redis is written by
the sync thread only (`breaker.shared`): a cancelled trial frees its slot and
counts nothing, here and in Redis, and the next call is the trial at once.

Async only: a sync call cannot be cancelled from outside. Every backend anyio
runs on is tried (asyncio, and trio when installed), with both ways a scope
cancels: ``CancelScope.cancel()`` while the trial waits for its answer, and
``move_on_after``. Time is a fake clock: the open window ends when the test
says so, never by waiting.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import replace
from typing import Any

import anyio
import httpx
import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from otel_integration import AsyncResilientTransport, ResilientTransport
from otel_integration._client.breaker.shared import KEY_PREFIX
from otel_integration._client.layer import ResilienceLayer
from otel_integration._settings import Settings
from otel_integration.errors import CircuitOpenError
from tests.conftest import FAST, FakeClock
from tests.peers import QuickFaultServer, wait_until
from tests.redis_peer import RedisPeer

pytestmark = pytest.mark.slow

BACKENDS = ["asyncio", *(["trio"] if importlib.util.find_spec("trio") else [])]
OPEN_SECONDS = 30.0
# What the sync thread writes for a breaker: no trial count, ever.
SHARED_FIELDS = {"state", "failures", "opened_at", "version"}


def stored(peer: RedisPeer, key: str) -> dict[str, str]:
    client = redis.Redis.from_url(peer.url, decode_responses=True)
    try:
        return client.hgetall(KEY_PREFIX + key)
    finally:
        client.close()


def stored_keys(peer: RedisPeer) -> list[str]:
    client = redis.Redis.from_url(peer.url, decode_responses=True)
    try:
        return sorted(client.keys("*"))
    finally:
        client.close()


def rounds_pass(layer: ResilienceLayer, count: int = 2) -> None:
    """Until the sync thread has completed `count` more rounds (whatever they had to do)."""
    assert layer.shared is not None
    start = layer.shared.rounds
    wait_until(lambda: layer.shared.rounds >= start + count, what=f"{count} sync rounds")  # type: ignore[union-attr]


@pytest.fixture
def half_open(redis_peer: RedisPeer, clock: FakeClock) -> Any:
    """A layer sharing its breakers through Redis, whose breaker of a real server is half-open."""
    with QuickFaultServer() as server:
        layer = ResilienceLayer(
            replace(
                Settings(), **FAST, breaker_storage=redis_peer.url, breaker_threshold=2,
                breaker_open_seconds=OPEN_SECONDS, breaker_half_open_calls=1, retry_attempts=1,
            ),
            tracer_provider=TracerProvider(),
            meter_provider=MeterProvider(),
            clock=clock,
        )
        try:
            key = f"127.0.0.1:{server.port}"
            with httpx.Client(transport=ResilientTransport(httpx.HTTPTransport(), layer)) as client:
                for _ in range(2):
                    assert client.get(f"{server.url}/status/500").status_code == 500
            breaker = layer.downstreams.get("127.0.0.1", server.port).breaker
            assert breaker.state() == "open"
            wait_until(lambda: stored(redis_peer, key).get("state") == "open", what="the opening pushed to Redis")
            clock.advance(OPEN_SECONDS + 1)
            assert breaker.state() == "half_open"
            yield layer, server, breaker, key
        finally:
            layer.close()


def async_client(layer: ResilienceLayer) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AsyncResilientTransport(httpx.AsyncHTTPTransport(), layer))


async def cancelled_trial(layer: ResilienceLayer, server: QuickFaultServer, breaker: Any, how: str) -> None:
    """One trial, admitted and sent, then cancelled by a cancel scope while it waits for its answer."""
    slow = f"{server.url}/slow?delay=30"
    async with async_client(layer) as client:
        if how == "move_on_after":
            # Real time on the event loop's clock: the trial's answer is 30 s away.
            with anyio.move_on_after(0.3) as scope:
                await client.get(slow)
            assert scope.cancelled_caught
            return
        scope = anyio.CancelScope()
        trial_slot_taken: list[bool] = []

        async def trial() -> None:
            with scope:
                await client.get(slow)

        async with anyio.create_task_group() as group:
            group.start_soon(trial)
            deadline = time.monotonic() + 30
            while not server.requests_to("/slow"):  # the trial reached the server: it waits for the answer
                assert time.monotonic() < deadline, "the trial never reached the server"
                await anyio.sleep(0.01)
            trial_slot_taken.append(breaker._model.trials == 1)
            with pytest.raises(CircuitOpenError):  # the one slot is the trial's: a second call is refused
                await client.get(f"{server.url}/ok")
            scope.cancel()
        assert scope.cancelled_caught and trial_slot_taken == [True]


async def next_call(layer: ResilienceLayer, server: QuickFaultServer) -> int:
    async with async_client(layer) as client:
        return (await client.get(f"{server.url}/ok")).status_code


@pytest.mark.parametrize("how", ["cancel_scope", "move_on_after"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_trial_cancelled_by_a_cancel_scope_leaves_no_trial_in_redis_or_locally(
    half_open, redis_peer, backend, how
):
    layer, server, breaker, key = half_open
    before = stored(redis_peer, key)
    anyio.run(cancelled_trial, layer, server, breaker, how, backend=backend)

    # Locally: the slot is free and the breaker still half-open (a cancellation is no verdict).
    assert breaker._model.trials == 0 and breaker._model.state == "half_open"
    # In Redis: a few sync rounds later, nothing about the cancelled trial (no trial count, no change).
    rounds_pass(layer)
    after = stored(redis_peer, key)
    assert set(after) == SHARED_FIELDS and after == before
    assert not [k for k in stored_keys(redis_peer) if "trial" in k.lower()]

    # The next call is the trial at once: the clock has not moved, no open window to wait out.
    assert anyio.run(next_call, layer, server, backend=backend) == 200
    assert breaker.state() == "closed"
    wait_until(lambda: stored(redis_peer, key).get("state") == "closed", what="the trial's success pushed to Redis")
