"""Under load: 50 threads or 500 tasks against a downstream that goes down and comes back.

The invariant of half-open: however many callers hammer it, exactly
``half_open_calls`` trials reach the downstream until one answers, and the
breaker recovers while the load goes on (the issue's runs saw 2 to 4 trials
with a limit of 1, and nothing recovered until the loop ended).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from otel_integration import AsyncResilientTransport, ResilientTransport
from otel_integration._client.layer import ResilienceLayer
from otel_integration._settings import Settings
from otel_integration.errors import CircuitOpenError
from tests.conftest import FAST, FakeClock
from tests.peers import wait_until


class Errors:
    """The errors callers saw, by phase: connection noise while 50 or 500 callers first connect
    to a busy machine's loopback is not what these tests are about; any error once every caller
    has been refused (the half-open trial and the recovery) is."""

    def __init__(self) -> None:
        self.settled = False
        self.early: list[str] = []
        self.late: list[str] = []

    def add(self, error: httpx.HTTPError) -> None:
        seen = f"{type(error).__name__}: {error!r} (cause {error.__cause__!r})"
        (self.late if self.settled else self.early).append(seen)

    def check(self) -> None:
        assert not self.late, self.late[:5]
        # Before: only the network's own errors, never one of the layer's (an IntegrationError).
        assert all(not kind.startswith(("CircuitOpen", "Downstream")) for kind in self.early), self.early[:5]


class Flipping:
    """A downstream that answers 503 ("down"), or holds each request until released ("up")."""

    def __init__(self) -> None:
        self.mode = "down"
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.held = 0
        this = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                with this.lock:
                    this.in_flight += 1
                    this.peak = max(this.peak, this.in_flight)
                try:
                    if this.mode == "down":
                        status = 503
                    else:
                        with this.lock:
                            this.held += 1
                        this.release.wait(30)
                        status = 200
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with this.lock:
                        this.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # 500 callers connect at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def up(self) -> None:
        with self.lock:
            self.mode, self.peak, self.held = "up", self.in_flight, 0

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def downstream() -> Any:
    flipping = Flipping()
    yield flipping
    flipping.close()


@pytest.fixture
def layer(clock: FakeClock) -> Any:
    made = ResilienceLayer(
        replace(Settings(), **FAST, retry_attempts=1, breaker_threshold=5, breaker_open_seconds=30, breaker_half_open_calls=1),
        clock=clock,
    )
    yield made
    made.close()


def test_fifty_threads_one_trial(downstream, layer, clock):
    port = downstream.server.server_address[1]
    breaker = layer.downstreams.get("127.0.0.1", port).breaker
    stop = threading.Event()
    refused, errors = [0], Errors()
    refused_by = [0] * 50
    client = httpx.Client(transport=ResilientTransport(httpx.HTTPTransport(limits=httpx.Limits(max_connections=100)), layer))

    def hammer(index: int) -> None:
        while not stop.is_set():
            try:
                client.get(downstream.url, timeout=30)
            except CircuitOpenError:
                refused[0] += 1
                refused_by[index] += 1
            except httpx.HTTPError as error:
                errors.add(error)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: breaker.state() == "open", what="the breaker opening under load")
        # Calls admitted before it opened may still be on their way (a busy machine): once every
        # thread has been refused, none is, and the only request the downstream sees next is the trial.
        wait_until(lambda: all(refused_by) and downstream.in_flight == 0, what="every caller refused")
        errors.settled = True
        downstream.up()
        before = refused[0]
        clock.advance(31)  # half-open: one trial, held at the downstream
        wait_until(lambda: downstream.held == 1, what="the trial reaching the downstream")
        wait_until(lambda: refused[0] > before + 500, what="many refusals while the trial is held")
        assert downstream.held == 1 and downstream.peak == 1  # every other caller was refused, fast
        downstream.release.set()
        wait_until(lambda: breaker.state() == "closed", what="the trial's success closing the breaker")
        errors.check()
    finally:
        stop.set()
        downstream.release.set()
        for t in threads:
            t.join()
        client.close()


def test_five_hundred_tasks_one_trial_and_recovery_during_the_loop(downstream, layer, clock):
    port = downstream.server.server_address[1]
    breaker = layer.downstreams.get("127.0.0.1", port).breaker

    async def main() -> None:
        stop = asyncio.Event()
        refused, errors = [0], Errors()
        transport = AsyncResilientTransport(httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=600)), layer)
        refused_by = [0] * 500
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:

            async def hammer(index: int) -> None:
                while not stop.is_set():
                    try:
                        if (await client.get(downstream.url)).status_code == 200:
                            return  # recovered: this caller is done
                    except CircuitOpenError:
                        refused[0] += 1
                        refused_by[index] += 1
                    except httpx.HTTPError as error:
                        errors.add(error)

            async def until(predicate: Any, what: str) -> None:
                for _ in range(3000):
                    if predicate():
                        return
                    await asyncio.sleep(0.01)
                pytest.fail(f"{what} not met", pytrace=False)

            tasks = [asyncio.ensure_future(hammer(i)) for i in range(500)]
            try:
                await until(lambda: breaker.state() == "open", "the breaker opening under load")
                # As with the threads: no call admitted before the opening is still on its way.
                await until(lambda: all(refused_by) and downstream.in_flight == 0, "every caller refused")
                errors.settled = True
                downstream.up()
                before = refused[0]
                clock.advance(31)
                await until(lambda: downstream.held == 1, "the trial reaching the downstream")
                await until(lambda: refused[0] > before + 2000, "many refusals while the trial is held")
                assert downstream.held == 1 and downstream.peak == 1
                downstream.release.set()
                # Recovery while the 500 tasks keep going: the trial's task gets to run.
                await until(lambda: breaker.state() == "closed", "the breaker closing during the loop")
                errors.check()
            finally:
                stop.set()
                downstream.release.set()
                await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
