"""The call core's decisions, through both transports (sync and async twins), on a fake clock.

Each test here pins down a bug of the pre-v2 transport (issue 11). The inner
transport is a real server on 127.0.0.1 where I/O matters, else httpx's
`MockTransport`: what is under test is the decision, not httpx.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
import stamina.instrumentation

from otel_integration import AsyncResilientTransport, ResilientTransport
from otel_integration._client.breaker import Outcome
from otel_integration._client.layer import ResilienceLayer
from otel_integration._settings import Settings
from otel_integration.errors import CircuitOpenError, IntegrationError
from tests.conftest import FAST, FakeClock, reader_total
from tests.peers import QuickFaultServer, closed_port, wait_until

Handler = Callable[[httpx.Request], httpx.Response]


class Twin:
    """One of the two transports, driven the same way by every test."""

    def __init__(self, kind: str, layer: ResilienceLayer) -> None:
        self.kind = kind
        self.layer = layer

    def send(self, request: httpx.Request, inner: Any = None, handler: Handler | None = None) -> httpx.Response:
        if self.kind == "sync":
            transport = ResilientTransport(inner or httpx.MockTransport(handler), self.layer)
            with httpx.Client(transport=transport) as client:
                response = client.send(request)
                response.read()
                return response

        async def main() -> httpx.Response:
            transport = AsyncResilientTransport(inner or httpx.MockTransport(handler), self.layer)
            async with httpx.AsyncClient(transport=transport) as client:
                response = await client.send(request)
                await response.aread()
                return response

        return asyncio.run(main())

    def real_inner(self, **kwargs: Any) -> Any:
        return httpx.HTTPTransport(**kwargs) if self.kind == "sync" else httpx.AsyncHTTPTransport(**kwargs)


@pytest.fixture(params=["sync", "async"])
def twin(request: pytest.FixtureRequest, clock: FakeClock) -> Any:
    made: list[ResilienceLayer] = []

    def make(**overrides: Any) -> Twin:
        layer = ResilienceLayer(replace(Settings(), **{**FAST, **overrides}), clock=clock)
        made.append(layer)
        return Twin(request.param, layer)

    yield make
    for layer in made:
        layer.close()


def statuses(*codes: int) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering `codes` in turn (then the last one), and the requests it saw."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(codes[min(len(seen), len(codes)) - 1])

    return handler, seen


def breaker_of(layer: ResilienceLayer, host: str = "svc.test", port: int = 80) -> Any:
    return layer.downstreams.get(host, port).breaker


# --- verdicts: only the downstream's own failures count --------------------------------------------


@pytest.mark.parametrize(
    "error",
    [httpx.PoolTimeout("pool full"), httpx.LocalProtocolError("bad header"), httpx.UnsupportedProtocol("ftp"),
     httpx.ProxyError("proxy down")],
    ids=lambda e: type(e).__name__,
)
def test_the_callers_own_errors_never_open_the_breaker(twin, error):
    t = twin(breaker_threshold=2, retry_attempts=1)

    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    for _ in range(7):
        with pytest.raises(type(error)):
            t.send(httpx.Request("GET", "http://svc.test/"), handler=handler)
    assert breaker_of(t.layer).state() == "closed"


def test_seven_pool_timeouts_behind_one_slow_call_leave_the_breaker_closed(twin):
    """The issue's case: the caller's full pool is not the downstream's failure."""
    t = twin(breaker_threshold=5, retry_attempts=1)
    with QuickFaultServer() as server:
        inner = t.real_inner(limits=httpx.Limits(max_connections=1))
        timeout = httpx.Timeout(5.0, pool=0.01)

        async def many() -> list[Any]:
            transport = AsyncResilientTransport(inner, t.layer)
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
                slow = asyncio.ensure_future(client.get(f"{server.url}/slow?delay=1"))
                await asyncio.sleep(0.2)
                results = [await asyncio.gather(client.get(f"{server.url}/ok"), return_exceptions=True) for _ in range(7)]
                await slow
                return results

        if t.kind == "async":
            results = asyncio.run(many())
            assert all(isinstance(r[0], httpx.PoolTimeout) for r in results), results
        else:
            import threading

            transport = ResilientTransport(inner, t.layer)
            errors: list[BaseException] = []
            with httpx.Client(transport=transport, timeout=timeout) as client:
                slow = threading.Thread(target=lambda: client.get(f"{server.url}/slow?delay=1"))
                slow.start()
                while not server.requests_to("/slow"):
                    pass
                for _ in range(7):
                    try:
                        client.get(f"{server.url}/ok")
                    except httpx.PoolTimeout as e:
                        errors.append(e)
                slow.join()
            assert len(errors) == 7
        assert breaker_of(t.layer, "127.0.0.1", server.port).state() == "closed"


# --- deadline and Retry-After --------------------------------------------------------------------------


def test_no_retry_whose_wait_would_end_at_or_after_the_deadline(twin, clock):
    t = twin(retry_deadline=0.5, retry_initial_wait=0.1, retry_jitter=0.0, retry_max_wait=1.0)
    handler, seen = statuses(503, 200)

    def slow_first(request: httpx.Request) -> httpx.Response:
        clock.advance(0.45)  # the first attempt took 0.45 s: a 0.1 s wait would end at 0.55 s
        return handler(request)

    response = t.send(httpx.Request("GET", "http://svc.test/"), handler=slow_first)
    assert response.status_code == 503 and len(seen) == 1


def test_no_attempt_starts_after_the_deadline_even_if_the_wait_overran(twin, clock, restore_stamina_hooks):
    """The issue's case: with a 0.5 s deadline a retry started at 0.51 s."""
    t = twin(retry_deadline=0.5, retry_initial_wait=0.01, retry_jitter=0.0)
    handler, seen = statuses(503, 200)
    stamina.instrumentation.set_on_retry_hooks([lambda details: clock.advance(0.5)])  # the sleep overran
    response = t.send(httpx.Request("GET", "http://svc.test/"), handler=handler)
    assert response.status_code == 503 and len(seen) == 1


def test_retry_after_is_waited_exactly_not_clipped(twin, restore_stamina_hooks):
    t = twin(retry_max_wait=5.0)
    waits: list[float] = []
    stamina.instrumentation.set_on_retry_hooks([lambda details: waits.append(details.wait_for)])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "0"}) if not waits else httpx.Response(200)

    assert t.send(httpx.Request("GET", "http://svc.test/"), handler=handler).status_code == 200
    assert waits == [0.0]


@pytest.mark.parametrize("retry_after", ["6", "3600"])
def test_retry_after_longer_than_the_max_wait_returns_the_response(twin, retry_after):
    t = twin(retry_max_wait=5.0)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, headers={"Retry-After": retry_after})

    response = t.send(httpx.Request("GET", "http://svc.test/"), handler=handler)
    assert response.status_code == 503 and response.headers["retry-after"] == retry_after and len(seen) == 1


# --- what the caller gets does not depend on timing -----------------------------------------------------


@pytest.fixture
def metered(clock: FakeClock) -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    made: list[ResilienceLayer] = []

    def make(kind: str, **overrides: Any) -> tuple[Twin, InMemoryMetricReader]:
        reader = InMemoryMetricReader()
        layer = ResilienceLayer(
            replace(Settings(), **{**FAST, **overrides}),
            clock=clock, meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=TracerProvider(),
        )
        made.append(layer)
        return Twin(kind, layer), reader

    yield make
    for layer in made:
        layer.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_breaker_opening_during_the_wait_returns_the_last_response(metered, kind, restore_stamina_hooks):
    """The issue's case: opening during the sleep raised CircuitOpenError and discarded the 503."""
    t, reader = metered(kind, breaker_threshold=5)
    breaker = breaker_of(t.layer)

    def open_it(details: Any) -> None:  # stamina calls this after the backoff decision, before the sleep
        while breaker.state() == "closed":  # other calls failing meanwhile
            breaker.settle(breaker.admit(), Outcome.FAILURE)

    stamina.instrumentation.set_on_retry_hooks([open_it])
    handler, seen = statuses(503, 200)
    response = t.send(httpx.Request("GET", "http://svc.test/"), handler=handler)
    assert response.status_code == 503 and len(seen) == 1
    assert reader_total(reader, "http.client.retries") == 0  # the retry was not made: not counted
    assert reader_total(reader, "http.client.circuit_breaker.rejections") == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_breaker_open_before_the_backoff_check_returns_the_last_response(metered, kind):
    t, reader = metered(kind, breaker_threshold=1)
    handler, seen = statuses(503, 200)
    response = t.send(httpx.Request("GET", "http://svc.test/"), handler=handler)  # the 503 opens it
    assert response.status_code == 503 and len(seen) == 1
    assert reader_total(reader, "http.client.retries") == 0


# --- under load --------------------------------------------------------------------------------------------------


def test_a_tight_loop_of_rejected_async_calls_lets_other_tasks_run(clock):
    """The issue's case: 2,000 rejections in 0.5 s, 0 turns of a concurrent ticker."""
    layer = ResilienceLayer(replace(Settings(), **FAST, breaker_threshold=1), clock=clock)
    breaker = breaker_of(layer)
    breaker.settle(breaker.admit(), Outcome.FAILURE)
    turns = [0]

    async def main() -> None:
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                turns[0] += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        transport = AsyncResilientTransport(httpx.MockTransport(lambda r: httpx.Response(200)), layer)
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(200):
                with pytest.raises(CircuitOpenError):
                    await client.get("http://svc.test/")
        stop.set()
        await task

    asyncio.run(main())
    layer.close()
    assert turns[0] >= 200


def test_a_trial_longer_than_the_open_window_is_still_the_only_trial(clock):
    layer = ResilienceLayer(replace(Settings(), **FAST, breaker_threshold=1, breaker_open_seconds=10), clock=clock)
    breaker = breaker_of(layer)
    breaker.settle(breaker.admit(), Outcome.FAILURE)
    clock.advance(10)
    inside: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if not inside:
            inside.append(request)
            clock.advance(60)  # the trial takes six open windows
            with pytest.raises(CircuitOpenError):  # meanwhile another caller is refused
                with httpx.Client(transport=ResilientTransport(httpx.MockTransport(handler), layer)) as other:
                    other.get("http://svc.test/other")
        return httpx.Response(200)

    with httpx.Client(transport=ResilientTransport(httpx.MockTransport(handler), layer)) as client:
        assert client.get("http://svc.test/").status_code == 200
    assert breaker.state() == "closed"
    layer.close()


async def _arrived(server: QuickFaultServer, path: str, timeout: float = 30.0) -> None:
    """Poll (without blocking the loop) until `server` has seen a request to `path`; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not server.requests_to(path):
        if time.monotonic() >= deadline:
            pytest.fail(f"no request to {path} within {timeout} s", pytrace=False)
        await asyncio.sleep(0.01)


def test_a_trial_longer_than_the_open_window_is_still_the_only_trial_async(clock):
    """The async twin, through a real server: the trial is held there while six open windows pass."""
    layer = ResilienceLayer(replace(Settings(), **FAST, breaker_threshold=1, breaker_open_seconds=10), clock=clock)
    with QuickFaultServer() as server:
        breaker = breaker_of(layer, "127.0.0.1", server.port)
        breaker.settle(breaker.admit(), Outcome.FAILURE)
        clock.advance(10)
        assert breaker.state() == "half_open"

        async def main() -> None:
            transport = AsyncResilientTransport(httpx.AsyncHTTPTransport(), layer)
            async with httpx.AsyncClient(transport=transport, timeout=60) as client:
                trial = asyncio.ensure_future(client.get(f"{server.url}/hold/trial"))
                await _arrived(server, "/hold/trial")
                clock.advance(60)  # the trial takes six open windows
                with pytest.raises(CircuitOpenError):  # meanwhile another caller is refused
                    await client.get(f"{server.url}/ok")
                assert server.requests_to("/ok") == []
                server.release("trial")
                assert (await trial).status_code == 200

        asyncio.run(main())
    assert breaker.state() == "closed"
    layer.close()


# The bug, through the transports: a verdict of a call admitted while closed, arriving while the
# breaker is half-open with its trial in flight, counts for nothing; only the trial's does.
@pytest.mark.parametrize(
    ("stale", "trial", "after"),
    [(200, 500, "open"), (500, 200, "closed")],
    ids=["late-success-then-trial-fails", "stale-failure-then-trial-succeeds"],
)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stale_verdict_during_half_open_neither_closes_nor_reopens(clock, kind, stale, trial, after):
    layer = ResilienceLayer(
        replace(Settings(), **FAST, breaker_threshold=1, breaker_open_seconds=10, retry_attempts=1), clock=clock,
    )
    with QuickFaultServer() as server:
        breaker = breaker_of(layer, "127.0.0.1", server.port)
        early_path, trial_path = "/hold/early", "/hold/trial"
        early_url, trial_url = f"{server.url}{early_path}?status={stale}", f"{server.url}{trial_path}?status={trial}"
        seen: list[str] = []

        def stages(answered_early: int) -> None:
            """Between the steps: the early call's answer came back, the trial is still in flight."""
            assert answered_early == stale
            seen.append(breaker.state())

        if kind == "sync":
            results: dict[str, Any] = {}
            with httpx.Client(transport=ResilientTransport(httpx.HTTPTransport(), layer), timeout=60) as client:

                def call(name: str, url: str) -> None:
                    try:
                        results[name] = client.get(url).status_code
                    except BaseException as error:  # noqa: BLE001 - reported by the assertions below
                        results[name] = error

                early = threading.Thread(target=call, args=("early", early_url))
                early.start()
                wait_until(lambda: server.requests_to(early_path), what="the early call reaching the server")
                assert client.get(f"{server.url}/status/500").status_code == 500  # opens the breaker
                assert breaker.state() == "open"
                clock.advance(10)
                in_flight = threading.Thread(target=call, args=("trial", trial_url))
                in_flight.start()
                wait_until(lambda: server.requests_to(trial_path), what="the trial reaching the server")
                assert breaker.state() == "half_open"
                server.release("early")
                early.join(timeout=60)
                assert not early.is_alive()
                stages(results["early"])
                with pytest.raises(CircuitOpenError):  # the trial slot is still the trial's
                    client.get(f"{server.url}/ok")
                server.release("trial")
                in_flight.join(timeout=60)
                assert not in_flight.is_alive()
                assert results["trial"] == trial
        else:

            async def main() -> None:
                transport = AsyncResilientTransport(httpx.AsyncHTTPTransport(), layer)
                async with httpx.AsyncClient(transport=transport, timeout=60) as client:
                    early = asyncio.ensure_future(client.get(early_url))
                    await _arrived(server, early_path)
                    assert (await client.get(f"{server.url}/status/500")).status_code == 500  # opens the breaker
                    assert breaker.state() == "open"
                    clock.advance(10)
                    in_flight = asyncio.ensure_future(client.get(trial_url))
                    await _arrived(server, trial_path)
                    assert breaker.state() == "half_open"
                    server.release("early")
                    stages((await early).status_code)
                    with pytest.raises(CircuitOpenError):  # the trial slot is still the trial's
                        await client.get(f"{server.url}/ok")
                    server.release("trial")
                    assert (await in_flight).status_code == trial

            asyncio.run(main())
        assert seen == ["half_open"]  # the stale verdict changed nothing
        assert server.requests_to("/ok") == []
        assert breaker.state() == after  # the trial's verdict: success closes it, failure reopens it
    layer.close()


def test_a_cancelled_pre_open_call_frees_no_trial_slot(clock):
    """Through the async transport: the slow call admitted while closed is cancelled during half-open."""
    layer = ResilienceLayer(replace(Settings(), **FAST, breaker_threshold=1, retry_attempts=1), clock=clock)
    breaker = breaker_of(layer)
    entered = asyncio.Event

    async def main() -> None:
        started = entered()
        release = entered()

        async def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/slow":
                started.set()
                await release.wait()
            if request.url.path == "/fail":
                return httpx.Response(500)
            return httpx.Response(200)

        transport = AsyncResilientTransport(httpx.MockTransport(handler), layer)
        async with httpx.AsyncClient(transport=transport) as client:
            slow = asyncio.ensure_future(client.get("http://svc.test/slow"))  # admitted while closed
            await started.wait()
            await client.get("http://svc.test/fail")  # opens
            clock.advance(30)
            trial = asyncio.ensure_future(client.get("http://svc.test/slow"))  # half-open: the trial
            await asyncio.sleep(0)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            with pytest.raises(CircuitOpenError):  # the cancelled call freed nothing
                await client.get("http://svc.test/ok")
            release.set()
            assert (await trial).status_code == 200
        assert breaker.state() == "closed"

    asyncio.run(main())
    layer.close()


# --- the end of a call: no leaks, no cycles, no private names ----------------------------------------------------


def test_the_final_error_is_raised_outside_any_except_block(twin):
    t = twin(retry_attempts=3)

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(httpx.ConnectError) as caught:
        t.send(httpx.Request("GET", "http://svc.test/"), handler=handler)
    error = caught.value
    # The structured twin, raised from httpx's error of the last attempt, itself raised outside any except.
    original = error.__cause__
    assert isinstance(error, IntegrationError) and type(original) is httpx.ConnectError
    assert error.__suppress_context__ and original.__context__ is None and original.__cause__ is None
    text = "".join(traceback.format_exception(error))
    assert "AttemptOutcome" not in text and "During handling" not in text


def _fail_and_drop(t: Twin, request: httpx.Request) -> tuple[weakref.ref[BaseException], int | None]:
    """Send `request` through `t` to a refused port; catch the final error where it is raised to the caller
    (inside the coroutine for async: asyncio's own Task would otherwise hold it), keep only a weakref to it
    and its attempts (None: httpx's own error, structured errors off)."""
    if t.kind == "sync":
        with httpx.Client(transport=ResilientTransport(t.real_inner(), t.layer)) as client:
            try:
                client.send(request)
            except httpx.ConnectError as error:
                return weakref.ref(error), getattr(error, "attempts", None)
        pytest.fail("no ConnectError")

    async def main() -> tuple[weakref.ref[BaseException], int]:
        async with httpx.AsyncClient(transport=AsyncResilientTransport(t.real_inner(), t.layer)) as client:
            try:
                await client.send(request)
            except httpx.ConnectError as error:
                return weakref.ref(error), getattr(error, "attempts", None)
        pytest.fail("no ConnectError")

    return asyncio.run(main())


@pytest.mark.parametrize("structured", [True, False], ids=["structured errors", "httpx's own errors"])
@pytest.mark.parametrize("attempts", [3, 1], ids=["retried", "unretried (the control: no retry loop)"])
def test_the_final_error_of_a_call_is_in_no_reference_cycle(twin, attempts, structured):
    """Refcounting alone frees the final error and the request (its body, its Authorization header).

    Three cycles did keep them until the garbage collector ran, for retried calls: the last
    error raised inside stamina's loop (tenacity's retry state keeps it, its traceback keeps
    that state), stamina's retry context, itself a cycle, holding Call.backoff, and, with
    structured errors off, httpx's error held by the frames its own traceback holds
    (Call.finish and its callers, through the last outcome).
    """
    t = twin(retry_attempts=attempts, breaker_threshold=1000, structured_errors=structured)
    request = httpx.Request("GET", f"http://127.0.0.1:{closed_port()}/", headers={"Authorization": "Bearer secret"})
    request_alive = weakref.ref(request)
    gc.collect()
    gc.disable()
    try:
        error_alive, made = _fail_and_drop(t, request)
        del request
        # Retried: its last attempt failed inside the retry loop (httpx's own error does not say).
        assert made == (attempts if structured else None)
        assert error_alive() is None, "the final error is part of a reference cycle"
        assert request_alive() is None, "the request is kept by a reference cycle"
    finally:
        gc.enable()


def test_nothing_of_a_call_stays_reachable_after_it(twin):
    """The issue's case: a 10 MB body and the Authorization header stayed reachable from the caller's context."""
    import contextvars

    with QuickFaultServer() as probe_target:  # a probed downstream: the old gate found the request in a contextvar
        t = twin(retry_attempts=2, health_probes={"svc.test:80": probe_target.url + "/ok"})
        t.layer.downstreams.probes["svc.test:80"].status(wait=5)
    answered = [0]

    def handler(request: httpx.Request) -> httpx.Response:  # keeps no reference to the request
        answered[0] += 1
        return httpx.Response(503 if answered[0] == 1 else 200)

    request = httpx.Request("POST", "http://svc.test/", content=b"x" * (10 * 1024 * 1024),
                            headers={"Authorization": "Bearer secret", "Idempotency-Key": "k"})
    alive = weakref.ref(request)
    response = t.send(request, handler=handler)
    assert response.status_code == 200 and answered[0] == 2
    values = list(contextvars.copy_context().values())
    assert not any(isinstance(v, httpx.Request) for v in values)  # no context variable holds it
    del response, request
    gc.collect()  # (httpx's own Response <-> stream cycle needs the collector, with or without us)
    assert alive() is None


def test_retries_log_one_informative_line_per_downstream_not_a_flood(twin, caplog):
    t = twin(retry_attempts=3, breaker_threshold=1000)
    handler, _ = statuses(503)
    with caplog.at_level(logging.INFO):
        for _ in range(20):
            t.send(httpx.Request("GET", "http://svc.test/", headers={"X-Request-ID": "req-7"}), handler=handler)
    ours = [r for r in caplog.records if r.name == "otel_integration.retries"]
    assert len(ours) == 1
    line = ours[0].getMessage()
    assert "GET to svc.test:80 after 503" in line and "attempt 1 of 3" in line and "request_id=req-7" in line
    assert [r for r in caplog.records if r.name == "stamina"] == []


def test_the_users_own_stamina_retries_still_log(caplog, instrument):
    instrument()  # the filter on stamina's logger is installed by the instrumentor
    stamina.instrumentation.set_on_retry_hooks(None)  # stamina's defaults: its logging hook
    calls = [0]

    @stamina.retry(on=ValueError, attempts=2, wait_initial=0, wait_jitter=0)
    def flaky() -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise ValueError("once")

    with caplog.at_level(logging.WARNING, logger="stamina"):
        flaky()
    assert [r.getMessage() for r in caplog.records if r.name == "stamina"] == ["stamina.retry_scheduled"]


# --- construction -----------------------------------------------------------------------------------------------


def test_the_documented_hand_made_transports_work():
    """The issue's case: the transport docstring example raised TypeError."""
    with QuickFaultServer() as server:
        with httpx.Client(transport=ResilientTransport(httpx.HTTPTransport())) as client:
            assert client.get(server.url + "/flaky/d?fail=1").status_code == 200

        async def main() -> int:
            async with httpx.AsyncClient(transport=AsyncResilientTransport(httpx.AsyncHTTPTransport())) as client:
                return (await client.get(server.url + "/flaky/e?fail=1")).status_code

        assert asyncio.run(main()) == 200
        assert len(server.requests_to("/flaky/d")) == 2 and len(server.requests_to("/flaky/e")) == 2


def test_the_sync_transport_is_generated_from_the_async_one():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "gen_unasync.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
