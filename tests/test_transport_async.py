"""End-to-end tests of `AsyncResilientTransport` (httpx.AsyncClient).

The async twin of tests/test_transport.py: a real HTTP server on 127.0.0.1,
httpx instrumented in-process, nothing of the transport mocked. Each test
runs its own event loop with `asyncio.run` (no pytest async plugin needed).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
import uuid
from urllib.parse import quote

import httpx
import pytest
import stamina
import stamina.instrumentation
from opentelemetry.trace import SpanKind, StatusCode

from otel_integration.errors import CircuitOpenError
from otel_integration._client.instrumentor import OtelIntegrationInstrumentor
from otel_integration._client.tracing import REQUEST_BODY_NOT_REPLAYABLE, RESEND_COUNT
from otel_integration import AsyncResilientTransport
from tests.conftest import Instrumented
from tests.peers import closed_port

RETRIES = "http.client.retries"
BUDGET_EXHAUSTED = "http.client.retry_budget.exhausted"
REJECTIONS = "http.client.circuit_breaker.rejections"
TRANSITIONS = "http.client.circuit_breaker.transitions"
STATE = "http.client.circuit_breaker.state"
CIRCUIT_OPEN_TYPE = "CircuitOpenError"


async def get(url: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url, **kwargs)


async def request(method: str, url: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.request(method, url, **kwargs)


def run(coro):
    return asyncio.run(coro)


# --- attempt counts -----------------------------------------------------------------


def test_503_burst_then_success_takes_three_attempts(instrument, fault_server):
    instrument()
    assert run(get(f"{fault_server.url}/flaky/burst?fail=2")).status_code == 200
    assert len(fault_server.requests_to("/flaky/burst")) == 3


def test_always_503_returns_the_last_503_after_three_attempts(instrument, fault_server):
    instrument()
    response = run(get(f"{fault_server.url}/status/503"))
    assert response.status_code == 503
    assert response.json()["path"] == "/status/503"
    assert len(fault_server.requests_to("/status/503")) == 3


def test_500_is_not_retried_but_counts_for_the_breaker(instrument, fault_server):
    inst = instrument()
    assert run(get(f"{fault_server.url}/status/500")).status_code == 500
    assert len(fault_server.requests_to("/status/500")) == 1
    assert inst.breaker(fault_server).status().failure_count == 1


@pytest.mark.parametrize("status", [400, 404])
def test_4xx_is_never_retried_and_never_a_breaker_failure(instrument, fault_server, status):
    inst = instrument(breaker_threshold=2)

    async def main():
        async with httpx.AsyncClient() as client:
            for _ in range(4):
                assert (await client.get(f"{fault_server.url}/status/{status}")).status_code == status

    run(main())
    assert len(fault_server.requests_to(f"/status/{status}")) == 4
    assert inst.breaker(fault_server).state() == "closed"
    assert inst.breaker(fault_server).status().failure_count == 0


def test_connection_refused_is_retried(instrument):
    inst = instrument()
    port = closed_port()
    with pytest.raises(httpx.ConnectError):
        run(get(f"http://127.0.0.1:{port}/x"))
    assert len(inst.attempt_spans(port)) == 3
    assert inst.counter_total(RETRIES, error_type="ConnectError") == 2


def test_connection_reset_is_retried_for_get_not_for_post(instrument, fault_server):
    instrument(breaker_threshold=100)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        run(get(f"{fault_server.url}/reset"))
    assert len(fault_server.requests_to("/reset")) == 3
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        run(request("POST", f"{fault_server.url}/reset", json={"n": 1}))
    assert len(fault_server.requests_to("/reset")) == 4


# --- idempotency --------------------------------------------------------------------


@pytest.mark.parametrize("method,expected", [("GET", 3), ("PUT", 3), ("DELETE", 3), ("POST", 1), ("PATCH", 1)])
def test_503_is_retried_only_for_idempotent_methods(instrument, fault_server, method, expected):
    instrument()
    kwargs = {} if method in ("GET", "DELETE") else {"json": {"a": 1}}
    assert run(request(method, f"{fault_server.url}/status/503", **kwargs)).status_code == 503
    assert [r.method for r in fault_server.requests_to("/status/503")] == [method] * expected


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_idempotency_key_makes_post_and_patch_retryable(instrument, fault_server, method):
    instrument()
    response = run(request(method, f"{fault_server.url}/flaky/ik?fail=2", json={}, headers={"Idempotency-Key": "k"}))
    assert response.status_code == 200
    assert len(fault_server.requests_to("/flaky/ik")) == 3


def test_post_is_retried_on_connection_refused(instrument):
    inst = instrument()
    port = closed_port()
    with pytest.raises(httpx.ConnectError):
        run(request("POST", f"http://127.0.0.1:{port}/x", json={}))
    assert len(inst.attempt_spans(port)) == 3


# --- Retry-After ----------------------------------------------------------------------


def test_retry_after_seconds_is_honoured(instrument, fault_server):
    instrument(retry_attempts=2, retry_max_wait=2.0)
    assert run(get(f"{fault_server.url}/flaky/ra?fail=1&retry_after=1")).status_code == 200
    (gap,) = fault_server.gaps("/flaky/ra")
    assert gap >= 0.9


def test_retry_after_http_date_is_honoured(instrument, fault_server):
    instrument(retry_attempts=2, retry_max_wait=5.0)
    target = int(time.time()) + 2  # an HTTP date has whole seconds
    when = email.utils.formatdate(target, usegmt=True)
    assert run(get(f"{fault_server.url}/flaky/date?fail=1&retry_after={quote(when)}")).status_code == 200
    first, retry = fault_server.requests_to("/flaky/date")
    assert retry.wall >= target - 0.05  # not earlier than the server asked


def test_retry_after_longer_than_the_max_wait_means_no_retry(instrument, fault_server):
    instrument(retry_attempts=3, retry_max_wait=0.2)
    assert run(get(f"{fault_server.url}/status/503?retry_after=30")).status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 1


def test_retry_after_beyond_the_deadline_means_no_retry(instrument, fault_server):
    instrument(retry_attempts=3, retry_max_wait=10.0, retry_deadline=0.5)
    assert run(get(f"{fault_server.url}/status/503?retry_after=5")).status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 1


# --- deadline and overrides -------------------------------------------------------------


def test_no_retry_starts_after_the_deadline(instrument, fault_server):
    instrument(retry_deadline=0.1)

    async def main():
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.3)) as client:
            await client.get(f"{fault_server.url}/slow?delay=1")

    with pytest.raises(httpx.ReadTimeout):
        run(main())
    assert len(fault_server.requests_to("/slow")) == 1


def test_per_request_overrides(instrument, fault_server):
    inst = instrument(breaker_threshold=100)
    assert run(get(f"{fault_server.url}/status/503", extensions={"otel_integration": {"attempts": 5}})).status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 5
    run(get(f"{fault_server.url}/status/504", extensions={"otel_integration": {"retry": False}}))
    assert len(fault_server.requests_to("/status/504")) == 1
    assert inst.counter_total(RETRIES) == 4


# --- streaming bodies -------------------------------------------------------------------


def test_streaming_body_is_sent_once_never_retried_and_span_says_so(instrument, fault_server):
    inst = instrument()
    sent = []

    async def body():
        sent.append(1)
        yield b"chunk-1"
        yield b"chunk-2"

    assert run(request("PUT", f"{fault_server.url}/status/503", content=body())).status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 1
    assert sent == [1]
    (span,) = inst.attempt_spans(fault_server.port)
    assert span.attributes.get(REQUEST_BODY_NOT_REPLAYABLE) is True


# --- request ID ----------------------------------------------------------------------------


def test_request_ids(instrument, fault_server):
    inst = instrument()

    async def main():
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{fault_server.url}/status/503")
            await client.get(f"{fault_server.url}/flaky/u?fail=1", headers={"X-Request-ID": "user-1"})
            await client.get(f"{fault_server.url}/flaky/bad?fail=1", headers={"X-Request-ID": "bad id"})
            await asyncio.gather(*(client.get(f"{fault_server.url}/ok") for _ in range(3)))
            return r

    response = run(main())
    ids = fault_server.request_ids("/status/503")
    assert len(ids) == 3 and len(set(ids)) == 1
    uuid.UUID(ids[0])
    assert response.request.headers["x-request-id"] == ids[0]
    spans = [s for s in inst.attempt_spans(fault_server.port) if s.attributes["url.full"].endswith("/status/503")]
    assert [Instrumented.request_id_of(s) for s in spans] == ids
    assert fault_server.request_ids("/flaky/u") == ["user-1", "user-1"]
    assert fault_server.request_ids("/flaky/bad") == ["bad id", "bad id"]  # the caller's own header, unchanged
    bad_spans = [s for s in inst.attempt_spans(fault_server.port) if s.attributes["url.full"].endswith("/flaky/bad?fail=1")]
    assert [Instrumented.request_id_of(s) for s in bad_spans] == [None, None]  # never recorded
    concurrent = fault_server.request_ids("/ok")
    assert len(set(concurrent)) == 3  # concurrent tasks do not share IDs
    assert ids[0] not in concurrent


@pytest.mark.parametrize("bad", ["has space", "semi;colon", "x" * 129, ""])
def test_callers_own_invalid_request_id_is_sent_unchanged_and_never_recorded(instrument, fault_server, bad):
    """The async twin of test_transport.py's: the caller's own `Request` object is left as the caller made it."""
    inst = instrument()
    request = httpx.Request("GET", f"{fault_server.url}/flaky/bad?fail=1", headers={"X-Request-ID": bad})

    async def main() -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.send(request)

    assert run(main()).status_code == 200
    assert request.headers["x-request-id"] == bad  # not overwritten on the caller's Request
    assert fault_server.request_ids("/flaky/bad") == [bad, bad]  # sent as is, on every attempt
    assert [Instrumented.request_id_of(s) for s in inst.attempt_spans(fault_server.port)] == [None, None]


# --- discarded responses --------------------------------------------------------------------


def test_discarded_attempts_release_their_connections(instrument, fault_server):
    instrument(breaker_threshold=1000)

    async def main():
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(5.0, pool=1.0)) as client:
            for i in range(6):
                assert (await client.get(f"{fault_server.url}/status/503")).status_code == 503
                assert (await client.get(f"{fault_server.url}/flaky/p{i}?fail=2")).status_code == 200

    run(main())
    assert len(fault_server.requests_to("/status/503")) == 18


def test_cancelled_call_during_backoff_releases_its_connection(instrument, fault_server):
    instrument(retry_max_wait=5.0)

    async def main():
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(5.0, pool=1.0)) as client:
            with pytest.raises(asyncio.TimeoutError):
                # Retry-After 3: cancelled while waiting for the second attempt.
                await asyncio.wait_for(client.get(f"{fault_server.url}/status/503?retry_after=3"), 0.3)
            return await client.get(f"{fault_server.url}/ok")

    assert run(main()).status_code == 200
    assert len(fault_server.requests_to("/status/503")) == 1


# --- budget --------------------------------------------------------------------------------------


def test_budget_exhausted_stops_retries_and_is_counted(instrument, fault_server):
    inst = instrument(retry_budget_ratio=0.0, retry_budget_min_per_second=0.1)

    async def main():
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                await client.get(f"{fault_server.url}/status/503")

    run(main())
    assert len(fault_server.requests_to("/status/503")) == 4
    assert inst.counter_total(RETRIES) == 1
    assert inst.counter_total(BUDGET_EXHAUSTED, server_port=fault_server.port) == 3


# --- circuit breaker -------------------------------------------------------------------------------


def test_breaker_opens_within_two_calls_to_a_dead_port(instrument):
    inst = instrument()
    port = closed_port()

    async def main():
        async with httpx.AsyncClient() as client:
            for _ in range(2):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://127.0.0.1:{port}/a")
            assert len(inst.attempt_spans(port)) == 5  # the second loop stopped after 2 attempts
            with pytest.raises(CircuitOpenError):
                await client.get(f"http://127.0.0.1:{port}/a")

    run(main())
    assert len(inst.attempt_spans(port)) == 5


def test_open_breaker_fails_fast_without_reaching_the_server(instrument, fault_server):
    inst = instrument()

    async def main():
        async with httpx.AsyncClient() as client:
            for _ in range(5):
                await client.get(f"{fault_server.url}/status/500")
            before = len(fault_server.requests)
            try:
                await client.get(f"{fault_server.url}/ok")
            except httpx.RequestError as error:
                return before, error
            pytest.fail("an open breaker let a call through")

    before, error = run(main())
    assert isinstance(error, CircuitOpenError)
    assert len(fault_server.requests) == before
    assert f"127.0.0.1:{fault_server.port}" in str(error)
    (span,) = [s for s in inst.client_spans() if s.attributes.get("error.type") == CIRCUIT_OPEN_TYPE]
    assert span.kind is SpanKind.CLIENT and span.status.status_code is StatusCode.ERROR
    assert inst.counter_total(REJECTIONS, server_port=fault_server.port, http_request_method="GET") == 1
    # (counter_total cannot express the key circuit_breaker.state: read the points)
    assert [(a["circuit_breaker.state"], p.value) for a, p in inst.metric_points(TRANSITIONS)] == [("open", 1)]
    assert [p.value for a, p in inst.metric_points(STATE) if a.get("server.port") == fault_server.port] == [2]


def test_retry_loop_stops_as_soon_as_the_breaker_opens(instrument, fault_server):
    instrument(retry_attempts=5, breaker_threshold=2)
    assert run(get(f"{fault_server.url}/status/503")).status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 2


@pytest.mark.parametrize("half_open_calls", [1, 2])
def test_half_open_admits_only_the_configured_trials_across_tasks(instrument, fault_server, half_open_calls, clock):
    inst = instrument(
        clock=clock, breaker_threshold=2, breaker_open_seconds=30, breaker_half_open_calls=half_open_calls
    )
    n = 8

    async def main():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=n)) as client:
            await client.get(f"{fault_server.url}/status/500")
            await client.get(f"{fault_server.url}/status/500")
            with pytest.raises(CircuitOpenError):
                await client.get(f"{fault_server.url}/ok")
            clock.advance(31)
            return await asyncio.gather(
                *(client.get(f"{fault_server.url}/slow?delay=0.3") for _ in range(n)), return_exceptions=True
            )

    results = run(main())
    assert len(fault_server.requests_to("/slow")) == half_open_calls
    assert sum(isinstance(r, httpx.Response) and r.status_code == 200 for r in results) == half_open_calls
    assert sum(isinstance(r, CircuitOpenError) for r in results) == n - half_open_calls
    assert inst.breaker(fault_server).state() == "closed"
    states = [a["circuit_breaker.state"] for a, _ in inst.metric_points(TRANSITIONS)]
    assert sorted(states) == ["closed", "half_open", "open"]


# --- spans and metrics --------------------------------------------------------------------------------


def test_one_span_per_attempt_with_resend_count(instrument, fault_server):
    inst = instrument()
    response = run(get(f"{fault_server.url}/flaky/spans?fail=2"))
    spans = inst.attempt_spans(fault_server.port)
    assert [s.attributes.get(RESEND_COUNT) for s in spans] == [None, 1, 2]
    assert [Instrumented.request_id_of(s) for s in spans] == [response.request.headers["x-request-id"]] * 3
    points = [(a, p.value) for a, p in inst.metric_points(RETRIES)]
    assert points == [
        (
            {
                "server.address": "127.0.0.1",
                "server.port": fault_server.port,
                "http.request.method": "GET",
                "error.type": "503",
            },
            2,
        )
    ]


# --- stamina -------------------------------------------------------------------------------------------


def test_stamina_testing_mode_is_instant_and_caps_attempts(instrument, fault_server, monkeypatch):
    instrument(retry_max_wait=10.0)
    stamina.set_testing(True, attempts=2)
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def recording(seconds: float, *args: object) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recording)
    assert run(get(f"{fault_server.url}/status/503?retry_after=5")).status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 2
    assert all(seconds == 0 for seconds in slept)  # Retry-After 5 ignored in testing mode


def test_stamina_inactive_disables_retries(instrument, fault_server):
    instrument()
    stamina.set_active(False)
    run(get(f"{fault_server.url}/status/503"))
    assert len(fault_server.requests_to("/status/503")) == 1


def test_user_stamina_hook_is_called_and_metrics_do_not_need_it(instrument, fault_server):
    inst = instrument()
    seen = []
    try:
        stamina.instrumentation.set_on_retry_hooks([seen.append])
        run(get(f"{fault_server.url}/flaky/hook?fail=2"))
        stamina.instrumentation.set_on_retry_hooks([])
        run(get(f"{fault_server.url}/flaky/nohook?fail=2"))
    finally:
        stamina.instrumentation.set_on_retry_hooks(None)
    assert [d.retry_num for d in seen] == [1, 2]
    assert inst.counter_total(RETRIES) == 4


# --- instrumentation mechanics ---------------------------------------------------------------------------


def test_async_client_created_before_instrument_is_covered(instrument, fault_server):
    async def main():
        async with httpx.AsyncClient() as client:
            await client.get(f"{fault_server.url}/status/503")
            assert len(fault_server.requests_to("/status/503")) == 1
            instrument()
            return await client.get(f"{fault_server.url}/flaky/before?fail=2")

    assert run(main()).status_code == 200
    assert len(fault_server.requests_to("/flaky/before")) == 3


def test_user_async_mock_transport_and_mounts_are_wrapped(instrument, fault_server):
    instrument()
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("x-request-id"))
        return httpx.Response(503 if len(calls) < 3 else 200)

    async def main():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            assert (await client.get("http://mocked.test/x")).status_code == 200
        mounts = {f"http://127.0.0.1:{fault_server.port}": httpx.AsyncHTTPTransport()}
        async with httpx.AsyncClient(mounts=mounts) as client:
            assert (await client.get(f"{fault_server.url}/flaky/mount?fail=2")).status_code == 200

    run(main())
    assert len(calls) == 3 and len(set(calls)) == 1
    assert len(fault_server.requests_to("/flaky/mount")) == 3


def test_hand_made_async_resilient_transport_is_not_wrapped_twice(instrument, fault_server):
    inst = instrument()

    async def main():
        transport = AsyncResilientTransport(httpx.AsyncHTTPTransport(), inst.layer)
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(f"{fault_server.url}/status/503")

    assert run(main()).status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 3


def test_uninstrument_restores_plain_httpx(instrument, fault_server):
    instrument()

    async def main():
        async with httpx.AsyncClient() as client:
            await client.get(f"{fault_server.url}/status/503")
            OtelIntegrationInstrumentor().uninstrument()
            await client.get(f"{fault_server.url}/status/503")

    run(main())
    assert len(fault_server.requests_to("/status/503")) == 4
