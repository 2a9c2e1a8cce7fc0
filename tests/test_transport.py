"""End-to-end tests of `ResilientTransport` (sync httpx.Client).

Every test talks to a real HTTP server on 127.0.0.1 (`tests.peers.FaultServer`)
or to a closed port, through httpx instrumented in-process by the `instrument`
fixture (upstream httpx instrumentation + ours, in-memory spans and metrics).
Nothing of the transport is mocked; stamina is only switched to its own
testing mode where stamina's testing mode is the subject.

The async twin of this file is tests/test_transport_async.py.
"""

from __future__ import annotations

import email.utils
import threading
import time
import uuid
from urllib.parse import quote

import httpx
import pytest
import stamina
import stamina.instrumentation
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, StatusCode

from otel_integration.errors import CircuitOpenError
from otel_integration._client.instrumentor import OtelIntegrationInstrumentor
from otel_integration._client import layer as layers
from otel_integration._client.layer import ResilienceLayer
from otel_integration._propagation import set_request_id
from otel_integration._settings import Settings
from otel_integration._client.tracing import REQUEST_BODY_NOT_REPLAYABLE, RESEND_COUNT
from otel_integration import ResilientTransport
from tests.conftest import Instrumented
from tests.peers import closed_port

RETRIES = "http.client.retries"
BUDGET_EXHAUSTED = "http.client.retry_budget.exhausted"
REJECTIONS = "http.client.circuit_breaker.rejections"
TRANSITIONS = "http.client.circuit_breaker.transitions"
STATE = "http.client.circuit_breaker.state"
CIRCUIT_OPEN_TYPE = "CircuitOpenError"


# --- helpers ----------------------------------------------------------------------


def rejected_spans(inst) -> list:
    return [s for s in inst.client_spans() if s.attributes.get("error.type") == CIRCUIT_OPEN_TYPE]


# --- attempt counts -----------------------------------------------------------------


def test_503_burst_then_success_takes_three_attempts(instrument, fault_server):
    instrument()
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/flaky/burst?fail=2")
    assert response.status_code == 200
    assert len(fault_server.requests_to("/flaky/burst")) == 3


def test_always_503_returns_the_last_503_after_three_attempts(instrument, fault_server):
    instrument()
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/status/503")
    assert response.status_code == 503
    assert response.json()["path"] == "/status/503"  # a readable, real response
    assert len(fault_server.requests_to("/status/503")) == 3


def test_500_is_not_retried_but_counts_for_the_breaker(instrument, fault_server):
    inst = instrument()
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/status/500")
    assert response.status_code == 500
    assert len(fault_server.requests_to("/status/500")) == 1
    assert inst.breaker(fault_server).status().failure_count == 1
    assert inst.counter_total(RETRIES) == 0


@pytest.mark.parametrize("status", [400, 404])
def test_4xx_is_never_retried_and_never_a_breaker_failure(instrument, fault_server, status):
    inst = instrument(breaker_threshold=2)
    with httpx.Client() as client:
        for _ in range(4):
            assert client.get(f"{fault_server.url}/status/{status}").status_code == status
        # A 4xx between two 5xx resets the consecutive count: the breaker stays closed.
        client.get(f"{fault_server.url}/status/500")
        client.get(f"{fault_server.url}/status/{status}")
        client.get(f"{fault_server.url}/status/500")
    assert len(fault_server.requests_to(f"/status/{status}")) == 5
    breaker = inst.breaker(fault_server)
    assert breaker.state() == "closed"
    assert breaker.status().failure_count == 1


def test_connection_refused_is_retried(instrument):
    inst = instrument()
    port = closed_port()
    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/x")
    assert len(inst.attempt_spans(port)) == 3
    assert inst.counter_total(RETRIES, error_type="ConnectError") == 2


def test_connection_reset_is_retried_for_get(instrument, fault_server):
    instrument()
    with httpx.Client() as client, pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.get(f"{fault_server.url}/reset")
    assert len(fault_server.requests_to("/reset")) == 3


def test_connection_reset_is_not_retried_for_post(instrument, fault_server):
    instrument()
    with httpx.Client() as client, pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.post(f"{fault_server.url}/reset", json={"n": 1})
    assert len(fault_server.requests_to("/reset")) == 1


def test_reset_once_then_success_for_get(instrument, fault_server):
    instrument()
    with httpx.Client() as client:
        assert client.get(f"{fault_server.url}/reset-once/k").status_code == 200
    assert len(fault_server.requests_to("/reset-once/k")) == 2


# --- idempotency --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_idempotent_methods_are_retried_on_503(instrument, fault_server, method):
    instrument()
    with httpx.Client() as client:
        response = client.request(method, f"{fault_server.url}/status/503")
    assert response.status_code == 503
    seen = fault_server.requests_to("/status/503")
    assert [r.method for r in seen] == [method] * 3


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_non_idempotent_methods_are_not_retried_on_503(instrument, fault_server, method):
    inst = instrument()
    with httpx.Client() as client:
        response = client.request(method, f"{fault_server.url}/status/503", json={"a": 1})
    assert response.status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 1
    assert inst.counter_total(RETRIES) == 0


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_non_idempotent_methods_with_idempotency_key_are_retried_on_503(instrument, fault_server, method):
    instrument()
    with httpx.Client() as client:
        response = client.request(
            method, f"{fault_server.url}/flaky/ik?fail=2", json={"a": 1}, headers={"Idempotency-Key": "k-1"}
        )
    assert response.status_code == 200
    seen = fault_server.requests_to("/flaky/ik")
    assert len(seen) == 3
    assert {r.headers["idempotency-key"] for r in seen} == {"k-1"}


def test_post_is_retried_on_connection_refused(instrument):
    inst = instrument()
    port = closed_port()
    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.post(f"http://127.0.0.1:{port}/x", json={"a": 1})
    assert len(inst.attempt_spans(port)) == 3
    assert inst.counter_total(RETRIES, http_request_method="POST", error_type="ConnectError") == 2


# --- Retry-After ----------------------------------------------------------------------


def test_retry_after_seconds_is_honoured(instrument, fault_server):
    instrument(retry_attempts=2, retry_max_wait=2.0)
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/flaky/ra?fail=1&retry_after=1")
    assert response.status_code == 200
    (gap,) = fault_server.gaps("/flaky/ra")
    assert gap >= 0.9


def test_retry_after_http_date_is_honoured(instrument, fault_server):
    instrument(retry_attempts=2, retry_max_wait=5.0)
    target = int(time.time()) + 2  # an HTTP date has whole seconds
    when = email.utils.formatdate(target, usegmt=True)
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/flaky/date?fail=1&retry_after={quote(when)}")
    assert response.status_code == 200
    first, retry = fault_server.requests_to("/flaky/date")
    assert retry.wall >= target - 0.05  # not earlier than the server asked (clock reads aside)


def test_retry_after_longer_than_the_max_wait_means_no_retry(instrument, fault_server):
    # Retrying earlier than the server asked would defeat Retry-After: the caller gets the 503.
    inst = instrument(retry_attempts=3, retry_max_wait=0.2)
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/status/503?retry_after=30")
    assert response.status_code == 503 and response.headers["retry-after"] == "30"
    assert len(fault_server.requests_to("/status/503")) == 1
    assert inst.metric_points(RETRIES) == []


def test_retry_after_beyond_the_deadline_means_no_retry(instrument, fault_server):
    instrument(retry_attempts=3, retry_max_wait=10.0, retry_deadline=0.5)
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/status/503?retry_after=5")
    assert response.status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 1


def test_malformed_retry_after_from_the_server_does_not_crash_the_call(instrument, fault_server):
    instrument()
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/status/503?retry_after=%C2%B2")  # header byte 0xB2
    assert response.status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 3


# --- deadline and per-request overrides --------------------------------------------------


def test_no_retry_starts_after_the_deadline(instrument, fault_server):
    instrument(retry_deadline=0.1)
    timeout = httpx.Timeout(5.0, read=0.3)
    with httpx.Client(timeout=timeout) as client, pytest.raises(httpx.ReadTimeout):
        client.get(f"{fault_server.url}/slow?delay=1")  # the first attempt alone outlives the deadline
    assert len(fault_server.requests_to("/slow")) == 1


def test_read_timeout_is_retried_within_the_deadline(instrument, fault_server):
    # Control for the test above: with time left, the same timeout is retried.
    instrument(retry_deadline=10.0)
    timeout = httpx.Timeout(5.0, read=0.2)
    with httpx.Client(timeout=timeout) as client, pytest.raises(httpx.ReadTimeout):
        client.get(f"{fault_server.url}/slow?delay=0.5")
    assert len(fault_server.requests_to("/slow")) == 3


def test_per_request_deadline_override(instrument, fault_server):
    instrument(retry_deadline=30.0)
    timeout = httpx.Timeout(5.0, read=0.3)
    with httpx.Client(timeout=timeout) as client, pytest.raises(httpx.ReadTimeout):
        client.get(f"{fault_server.url}/slow?delay=1", extensions={"otel_integration": {"deadline": 0.1}})
    assert len(fault_server.requests_to("/slow")) == 1


def test_per_request_attempts_override(instrument, fault_server):
    instrument()
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/status/503", extensions={"otel_integration": {"attempts": 5}})
    assert response.status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 5


def test_per_request_retry_false(instrument, fault_server):
    inst = instrument()
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/status/503", extensions={"otel_integration": {"retry": False}})
    assert response.status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 1
    assert inst.counter_total(RETRIES) == 0


def test_per_request_retry_false_wins_over_attempts(instrument, fault_server):
    # "retry: False disables retries" (transport docstring), whatever else the dict says.
    instrument()
    with httpx.Client() as client:
        client.get(
            f"{fault_server.url}/status/503", extensions={"otel_integration": {"retry": False, "attempts": 5}}
        )
    assert len(fault_server.requests_to("/status/503")) == 1


def test_retry_attempts_setting_one_disables_retries(instrument, fault_server):
    instrument(retry_attempts=1)
    with httpx.Client() as client:
        assert client.get(f"{fault_server.url}/status/503").status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 1


# --- streaming bodies -----------------------------------------------------------------------


def test_streaming_body_is_sent_once_never_retried_and_span_says_so(instrument, fault_server):
    inst = instrument()
    sent = []

    def body():
        sent.append(1)
        yield b"chunk-1"
        yield b"chunk-2"

    with httpx.Client() as client:
        response = client.put(f"{fault_server.url}/status/503", content=body())  # idempotent, retryable status
    assert response.status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 1
    assert sent == [1]
    (span,) = inst.attempt_spans(fault_server.port)
    assert span.attributes.get(REQUEST_BODY_NOT_REPLAYABLE) is True
    assert RESEND_COUNT not in span.attributes
    assert inst.counter_total(RETRIES) == 0


def test_streaming_body_not_retried_even_on_connection_refused(instrument):
    inst = instrument()
    port = closed_port()

    def body():
        yield b"x"

    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.put(f"http://127.0.0.1:{port}/x", content=body())
    assert len(inst.attempt_spans(port)) == 1


def test_replayable_bodies_are_resent_identically(instrument, fault_server):
    # bytes and multipart bodies are replayable: each attempt carries the full body.
    instrument()
    with httpx.Client() as client:
        r1 = client.put(f"{fault_server.url}/flaky/bytes?fail=2", content=b"hello")
        r2 = client.put(f"{fault_server.url}/flaky/multi?fail=1", files={"f": ("f.txt", b"data")})
    assert r1.status_code == r2.status_code == 200
    lengths = {r.headers.get("content-length") for r in fault_server.requests_to("/flaky/bytes")}
    assert lengths == {"5"}
    multi = fault_server.requests_to("/flaky/multi")
    assert len(multi) == 2
    assert multi[0].headers["content-length"] == multi[1].headers["content-length"] != "0"


# --- request ID -------------------------------------------------------------------------------


def test_all_attempts_share_one_request_id(instrument, fault_server):
    inst = instrument()
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/status/503")
    ids = fault_server.request_ids("/status/503")
    assert len(ids) == 3 and len(set(ids)) == 1
    uuid.UUID(ids[0])
    assert response.request.headers["x-request-id"] == ids[0]
    assert [Instrumented.request_id_of(s) for s in inst.attempt_spans(fault_server.port)] == ids


def test_valid_user_request_id_is_kept(instrument, fault_server):
    instrument()
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/flaky/u?fail=2", headers={"X-Request-ID": "order-42.a:b_c"})
    assert fault_server.request_ids("/flaky/u") == ["order-42.a:b_c"] * 3


@pytest.mark.parametrize("bad", ["has space", "semi;colon", "x" * 129, ""])
def test_callers_own_invalid_request_id_is_sent_unchanged_and_never_recorded(instrument, fault_server, bad):
    inst = instrument()
    request = httpx.Request("GET", f"{fault_server.url}/flaky/bad?fail=1", headers={"X-Request-ID": bad})
    with httpx.Client() as client:
        assert client.send(request).status_code == 200
    assert request.headers["x-request-id"] == bad  # the caller's Request is left as the caller made it
    assert fault_server.request_ids("/flaky/bad") == [bad, bad]  # sent as is, on every attempt
    assert [Instrumented.request_id_of(s) for s in inst.attempt_spans(fault_server.port)] == [None, None]


def test_separate_calls_get_separate_request_ids(instrument, fault_server):
    instrument()
    with httpx.Client() as client:
        for _ in range(3):
            client.get(f"{fault_server.url}/ok")
    ids = fault_server.request_ids("/ok")
    assert len(set(ids)) == 3


def test_request_id_of_the_current_context_is_used(instrument, fault_server):
    instrument()
    token = otel_context.attach(set_request_id("incoming-123"))
    try:
        with httpx.Client() as client:
            client.get(f"{fault_server.url}/flaky/ctx?fail=1")
            client.get(f"{fault_server.url}/ok")
    finally:
        otel_context.detach(token)
    assert fault_server.request_ids("/flaky/ctx") == ["incoming-123"] * 2
    assert fault_server.request_ids("/ok") == ["incoming-123"]


# --- discarded responses go back to the pool ------------------------------------------------------


def test_discarded_attempts_release_their_connections(instrument, fault_server):
    instrument(breaker_threshold=1000)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(5.0, pool=1.0)
    with httpx.Client(limits=limits, timeout=timeout) as client:
        for i in range(6):
            assert client.get(f"{fault_server.url}/status/503").status_code == 503
            assert client.get(f"{fault_server.url}/flaky/p{i}?fail=2").status_code == 200
    assert len(fault_server.requests_to("/status/503")) == 18


class _Interrupt(BaseException):
    """Stands for KeyboardInterrupt / SystemExit raised while a retry is being scheduled."""


def test_call_interrupted_between_attempts_releases_its_connection(instrument, fault_server, restore_stamina_hooks):
    instrument()

    def interrupt(details):
        raise _Interrupt

    stamina.instrumentation.set_on_retry_hooks([interrupt])  # runs after attempt 1, before the sleep
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(limits=limits, timeout=httpx.Timeout(5.0, pool=1.0)) as client:
        with pytest.raises(_Interrupt):
            client.get(f"{fault_server.url}/status/503")
        stamina.instrumentation.set_on_retry_hooks([])
        assert client.get(f"{fault_server.url}/ok").status_code == 200  # PoolTimeout if the 503 leaked
    assert len(fault_server.requests_to("/status/503")) == 1


def test_streamed_final_response_is_left_open_for_the_caller(instrument, fault_server):
    instrument()
    limits = httpx.Limits(max_connections=1)
    with httpx.Client(limits=limits, timeout=httpx.Timeout(5.0, pool=1.0)) as client:
        with client.stream("GET", f"{fault_server.url}/status/503") as response:
            assert response.status_code == 503
            assert response.read()  # the last attempt's body is intact and readable
        assert client.get(f"{fault_server.url}/ok").status_code == 200


# --- retry budget ------------------------------------------------------------------------------


def test_budget_exhausted_stops_retries_and_is_counted(instrument, fault_server):
    # ratio 0: calls earn nothing; floor 0.1/s * 10 s window = one retry in reserve.
    inst = instrument(retry_budget_ratio=0.0, retry_budget_min_per_second=0.1)
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/status/503")  # first retry spends the floor; second is refused
        assert len(fault_server.requests_to("/status/503")) == 2
        client.get(f"{fault_server.url}/status/503")
        client.get(f"{fault_server.url}/status/503")
    assert len(fault_server.requests_to("/status/503")) == 4
    assert inst.counter_total(RETRIES) == 1
    assert inst.counter_total(BUDGET_EXHAUSTED) == 3
    (attrs, _), *_ = inst.metric_points(BUDGET_EXHAUSTED)
    assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == fault_server.port


def test_budget_does_not_limit_successful_calls(instrument, fault_server):
    inst = instrument(retry_budget_ratio=0.0, retry_budget_min_per_second=0.0)
    with httpx.Client() as client:
        for _ in range(5):
            assert client.get(f"{fault_server.url}/ok").status_code == 200
        assert client.get(f"{fault_server.url}/status/503").status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 1
    assert inst.counter_total(BUDGET_EXHAUSTED) == 1


# --- circuit breaker ------------------------------------------------------------------------------


def test_breaker_opens_within_two_calls_to_a_dead_port_and_stops_the_retry_loop(instrument):
    inst = instrument()  # threshold 5, 3 attempts
    port = closed_port()
    with httpx.Client() as client:
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{port}/a")
        assert len(inst.attempt_spans(port)) == 3
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{port}/a")
        assert len(inst.attempt_spans(port)) == 5  # the loop stopped when the breaker opened
        assert inst.breaker(port).state() == "open"
        with pytest.raises(CircuitOpenError):
            client.get(f"http://127.0.0.1:{port}/a")
    assert len(inst.attempt_spans(port)) == 5  # the rejected call did no I/O


def test_retry_loop_stops_as_soon_as_the_breaker_opens(instrument, fault_server):
    inst = instrument(retry_attempts=5, breaker_threshold=2)
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/status/503")
    assert response.status_code == 503  # the user gets the last response, not CircuitOpenError
    assert len(fault_server.requests_to("/status/503")) == 2
    assert inst.counter_total(RETRIES) == 1
    assert inst.breaker(fault_server).state() == "open"


def test_open_breaker_fails_fast_without_reaching_the_server(instrument, fault_server):
    inst = instrument(breaker_open_seconds=30.0)
    with httpx.Client() as client:
        for _ in range(5):
            assert client.get(f"{fault_server.url}/status/500").status_code == 500
        before = len(fault_server.requests)
        with pytest.raises(CircuitOpenError) as caught:
            client.get(f"{fault_server.url}/ok")
        try:
            client.post(f"{fault_server.url}/ok", json={})
        except httpx.RequestError as error:  # code written against plain httpx still catches it
            assert isinstance(error, CircuitOpenError)
        else:
            pytest.fail("an open breaker let a call through")
    assert len(fault_server.requests) == before  # failed fast: no I/O
    error = caught.value
    assert isinstance(error, httpx.TransportError)
    assert f"127.0.0.1:{fault_server.port}" in str(error)
    assert error.downstream == f"127.0.0.1:{fault_server.port}"
    assert error.request.url.path == "/ok"
    assert error.retry_at > time.time()
    assert inst.counter_total(REJECTIONS) == 2
    assert inst.counter_total(REJECTIONS, http_request_method="GET", server_port=fault_server.port) == 1


def test_rejected_call_has_an_error_client_span(instrument, fault_server):
    inst = instrument(breaker_threshold=1)
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/status/502?secret=1")  # 502: one failure opens (threshold 1)
        with pytest.raises(CircuitOpenError):
            client.get(f"http://user:pw@127.0.0.1:{fault_server.port}/ok")
    (span,) = rejected_spans(inst)
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == CIRCUIT_OPEN_TYPE
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["server.port"] == fault_server.port
    assert "pw" not in span.attributes["url.full"]
    assert RESEND_COUNT not in span.attributes


def test_breaker_metrics_state_and_transitions(instrument, fault_server, clock):
    inst = instrument(clock=clock, breaker_threshold=2, breaker_open_seconds=30)
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/status/500")
        client.get(f"{fault_server.url}/status/500")
        points = inst.metric_points(STATE)
        assert [p.value for a, p in points if a.get("server.port") == fault_server.port] == [2]
        clock.advance(31)
        assert client.get(f"{fault_server.url}/ok").status_code == 200
    opened = [
        p.value for a, p in inst.metric_points(TRANSITIONS) if a.get("circuit_breaker.state") == "open"
    ]
    half = [p.value for a, p in inst.metric_points(TRANSITIONS) if a.get("circuit_breaker.state") == "half_open"]
    closed = [p.value for a, p in inst.metric_points(TRANSITIONS) if a.get("circuit_breaker.state") == "closed"]
    assert opened == [1] and half == [1] and closed == [1]
    points = inst.metric_points(STATE)
    assert [p.value for a, p in points if a.get("server.port") == fault_server.port] == [0]
    for attrs, _ in inst.metric_points(TRANSITIONS):
        assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == fault_server.port


def test_half_open_trial_success_closes_the_breaker(instrument, fault_server, clock):
    inst = instrument(clock=clock, breaker_threshold=2, breaker_open_seconds=30)
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/status/500")
        client.get(f"{fault_server.url}/status/500")
        with pytest.raises(CircuitOpenError):
            client.get(f"{fault_server.url}/ok")
        clock.advance(31)
        assert inst.breaker(fault_server).state() == "half_open"
        assert client.get(f"{fault_server.url}/ok").status_code == 200
        assert inst.breaker(fault_server).state() == "closed"
        assert client.get(f"{fault_server.url}/ok").status_code == 200
    assert len(fault_server.requests_to("/ok")) == 2


def test_half_open_trial_failure_reopens_without_retrying(instrument, fault_server, clock):
    inst = instrument(clock=clock, breaker_threshold=2, breaker_open_seconds=30)
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/status/500")
        client.get(f"{fault_server.url}/status/500")
        clock.advance(31)
        assert client.get(f"{fault_server.url}/status/503").status_code == 503
        assert inst.breaker(fault_server).state() == "open"
        with pytest.raises(CircuitOpenError):
            client.get(f"{fault_server.url}/ok")
    assert len(fault_server.requests_to("/status/503")) == 1  # the trial failed: no retry into an open breaker


@pytest.mark.parametrize("half_open_calls", [1, 2])
def test_half_open_admits_only_the_configured_trials_across_threads(instrument, fault_server, half_open_calls, clock):
    inst = instrument(
        clock=clock, breaker_threshold=2, breaker_open_seconds=30, breaker_half_open_calls=half_open_calls
    )
    n = 8
    with httpx.Client(limits=httpx.Limits(max_connections=n)) as client:
        client.get(f"{fault_server.url}/status/500")
        client.get(f"{fault_server.url}/status/500")
        clock.advance(31)
        barrier = threading.Barrier(n)
        results: list[object] = []
        lock = threading.Lock()

        def call() -> None:
            barrier.wait()
            try:
                outcome: object = client.get(f"{fault_server.url}/slow?delay=0.3").status_code
            except Exception as error:  # noqa: BLE001 - the test sorts outcomes
                outcome = error
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=call) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert len(fault_server.requests_to("/slow")) == half_open_calls
    assert results.count(200) == half_open_calls
    assert sum(isinstance(r, CircuitOpenError) for r in results) == n - half_open_calls
    assert inst.breaker(fault_server).state() == "closed"


# --- spans and metrics -------------------------------------------------------------------------------


def test_one_span_per_attempt_with_resend_count_and_request_id(instrument, fault_server):
    inst = instrument()
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/flaky/spans?fail=2")
    spans = inst.attempt_spans(fault_server.port)
    assert len(spans) == 3
    assert [s.attributes.get(RESEND_COUNT) for s in spans] == [None, 1, 2]
    assert [s.attributes.get("http.response.status_code") for s in spans] == [503, 503, 200]
    header = response.request.headers["x-request-id"]
    assert [Instrumented.request_id_of(s) for s in spans] == [header] * 3
    assert all(s.kind is SpanKind.CLIENT for s in spans)


def test_no_resend_count_on_a_single_attempt(instrument, fault_server):
    inst = instrument()
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/ok")
    (span,) = inst.attempt_spans(fault_server.port)
    assert RESEND_COUNT not in span.attributes
    assert REQUEST_BODY_NOT_REPLAYABLE not in span.attributes


def test_retries_metric_attributes(instrument, fault_server):
    inst = instrument()
    port = closed_port()
    with httpx.Client() as client:
        client.put(f"{fault_server.url}/flaky/m?fail=2", content=b"x")
        with pytest.raises(httpx.ConnectError):
            client.delete(f"http://127.0.0.1:{port}/y")
    points = {tuple(sorted(a.items())): p.value for a, p in inst.metric_points(RETRIES)}
    assert points == {
        tuple(sorted({
            "server.address": "127.0.0.1",
            "server.port": fault_server.port,
            "http.request.method": "PUT",
            "error.type": "503",
        }.items())): 2,
        tuple(sorted({
            "server.address": "127.0.0.1",
            "server.port": port,
            "http.request.method": "DELETE",
            "error.type": "ConnectError",
        }.items())): 2,
    }


def test_no_retry_metric_on_success(instrument, fault_server):
    inst = instrument()
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/ok")
    assert inst.metric_points(RETRIES) == []


# --- stamina integration --------------------------------------------------------------------------------


def test_stamina_testing_mode_is_instant_and_caps_attempts(instrument, fault_server, monkeypatch):
    instrument(retry_max_wait=10.0)
    stamina.set_testing(True, attempts=2)
    slept: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda seconds: slept.append(seconds) or real_sleep(min(seconds, 0.01)))
    with httpx.Client() as client:
        response = client.get(f"{fault_server.url}/status/503?retry_after=5")
    assert response.status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 2
    assert all(seconds == 0 for seconds in slept)  # Retry-After 5 ignored in testing mode


def test_stamina_testing_mode_with_one_attempt_disables_retries(instrument, fault_server):
    instrument()
    stamina.set_testing(True)  # attempts=1
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/status/503")
    assert len(fault_server.requests_to("/status/503")) == 1


def test_stamina_testing_mode_attempts_are_respected_above_the_setting(instrument, fault_server):
    # stamina's contract: set_testing(True, attempts=N) *sets* attempts to N (cap=False).
    instrument(retry_attempts=3)
    stamina.set_testing(True, attempts=5)
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/status/503")
    assert len(fault_server.requests_to("/status/503")) == 5


def test_stamina_inactive_disables_retries(instrument, fault_server):
    inst = instrument()
    stamina.set_active(False)
    with httpx.Client() as client:
        assert client.get(f"{fault_server.url}/status/503").status_code == 503
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{closed_port()}/")
    assert len(fault_server.requests_to("/status/503")) == 1
    assert inst.counter_total(RETRIES) == 0


def test_user_stamina_hook_is_called_by_our_retries(instrument, fault_server, restore_stamina_hooks):
    inst = instrument()
    seen = []
    stamina.instrumentation.set_on_retry_hooks([seen.append])
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/flaky/hook?fail=2")
    assert [d.retry_num for d in seen] == [1, 2]
    assert inst.counter_total(RETRIES) == 2


def test_our_metrics_do_not_depend_on_stamina_hooks(instrument, fault_server, restore_stamina_hooks):
    inst = instrument()
    stamina.instrumentation.set_on_retry_hooks([])
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/flaky/nohook?fail=2")
    assert len(fault_server.requests_to("/flaky/nohook")) == 3
    assert inst.counter_total(RETRIES, error_type="503") == 2


# --- instrumentation mechanics ----------------------------------------------------------------------------


def test_client_created_before_instrument_is_covered(instrument, fault_server):
    client = httpx.Client()
    try:
        assert client.get(f"{fault_server.url}/status/503").status_code == 503  # not yet instrumented
        assert len(fault_server.requests_to("/status/503")) == 1
        instrument()
        assert client.get(f"{fault_server.url}/flaky/before?fail=2").status_code == 200
    finally:
        client.close()
    assert len(fault_server.requests_to("/flaky/before")) == 3


def test_user_mock_transport_is_wrapped(instrument):
    instrument()
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("x-request-id"))
        return httpx.Response(503 if len(calls) < 3 else 200)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        response = client.get("http://mocked.test/x")
    assert response.status_code == 200
    assert len(calls) == 3 and len(set(calls)) == 1 and calls[0]


def test_mounted_transports_are_wrapped(instrument, fault_server):
    instrument()
    mocked = []

    def handler(request: httpx.Request) -> httpx.Response:
        mocked.append(request.url.path)
        return httpx.Response(503)

    mounts = {
        "http://mocked.test": httpx.MockTransport(handler),
        f"http://127.0.0.1:{fault_server.port}": httpx.HTTPTransport(),
    }
    with httpx.Client(mounts=mounts) as client:
        assert client.get("http://mocked.test/m").status_code == 503
        assert client.get(f"{fault_server.url}/flaky/mount?fail=2").status_code == 200
    assert mocked == ["/m"] * 3
    assert len(fault_server.requests_to("/flaky/mount")) == 3


def test_hand_made_resilient_transport_is_not_wrapped_twice(instrument, fault_server):
    inst = instrument()
    transport = ResilientTransport(httpx.HTTPTransport(), inst.layer)
    with httpx.Client(transport=transport) as client:
        assert client.get(f"{fault_server.url}/status/503").status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 3  # 9 if wrapped twice
    assert inst.counter_total(RETRIES) == 2


def test_hand_made_transport_with_its_own_layer_keeps_its_settings(instrument, fault_server):
    instrument()  # default: 3 attempts
    own = ResilienceLayer(Settings(retry_attempts=2, retry_initial_wait=0.01, retry_max_wait=0.05, retry_jitter=0))
    try:
        with httpx.Client(transport=ResilientTransport(httpx.HTTPTransport(), own)) as client:
            client.get(f"{fault_server.url}/status/503")
    finally:
        own.close()
    assert len(fault_server.requests_to("/status/503")) == 2


def test_uninstrument_restores_plain_httpx(instrument, fault_server):
    instrument()
    with httpx.Client() as client:
        client.get(f"{fault_server.url}/status/503")
        assert len(fault_server.requests_to("/status/503")) == 3
        OtelIntegrationInstrumentor().uninstrument()
        assert client.get(f"{fault_server.url}/status/503").status_code == 503
    assert len(fault_server.requests_to("/status/503")) == 4
    with httpx.Client() as fresh:
        fresh.get(f"{fault_server.url}/status/503")
    assert len(fault_server.requests_to("/status/503")) == 5
    assert layers.active() is None


def test_httpx_module_level_functions_are_covered(instrument, fault_server):
    instrument()
    assert httpx.get(f"{fault_server.url}/flaky/module?fail=2").status_code == 200
    assert len(fault_server.requests_to("/flaky/module")) == 3


# --- OTEL_INTEGRATION_TIMEOUT ----------------------------------------------------------------------------------


def test_the_configured_timeout_applies_when_the_caller_set_none(instrument, fault_server):
    instrument(timeout=0.2, retry_attempts=1)
    with httpx.Client() as client, pytest.raises(httpx.ReadTimeout):  # httpx's default (5 s) would wait
        client.get(f"{fault_server.url}/slow?delay=1")
    with httpx.Client(timeout=3.0) as client:  # the caller's own timeout is theirs
        assert client.get(f"{fault_server.url}/slow?delay=1").status_code == 200


def test_the_timeout_of_one_service(instrument, fault_server):
    instrument(
        retry_attempts=1,
        services={"slowpoke": fault_server.url.removeprefix("http://")},
        service_overrides={"slowpoke": {"timeout": 0.2}},
    )
    with httpx.Client() as client, pytest.raises(httpx.ReadTimeout):
        client.get(f"{fault_server.url}/slow?delay=1")
