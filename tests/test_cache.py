"""The response cache (hishel) in front of the resilient transport: hits, stale-if-error, credentials.

Real peers only: the fault server on 127.0.0.1 (its ``/cache/<key>`` route
sends the Cache-Control and Date it is asked for, then fails on demand), real
hishel storages (memory, SQLite; Redis in test_cache_redis.py), the real
instrumentation. Each scenario runs through sync and async clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import context as otel_context

from otel_integration import _auth as auth
from otel_integration._client.breaker import Outcome
from otel_integration.errors import CircuitOpenError
from tests.peers import QuickFaultServer, wait_until

REQUESTS = "http.client.cache.requests"
OUTCOME = "http.client.cache.outcome"


class Caller:
    """httpx.Client or httpx.AsyncClient (on one event loop for the whole test), called the same way."""

    def __init__(self, flavor: str) -> None:
        self.flavor = flavor
        if flavor == "sync":
            self.client: Any = httpx.Client()
        else:
            self.loop = asyncio.new_event_loop()
            self.client = httpx.AsyncClient()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self.flavor == "sync":
            return self.client.request(method, url, **kwargs)  # type: ignore[no-any-return]
        return self.loop.run_until_complete(self.client.request(method, url, **kwargs))  # type: ignore[no-any-return]

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def close(self) -> None:
        if self.flavor == "sync":
            self.client.close()
        else:
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()


@pytest.fixture(params=["sync", "async"])
def caller(request: pytest.FixtureRequest) -> Iterator[Caller]:
    made = Caller(request.param)
    yield made
    made.close()


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    return "memory" if request.param == "memory" else f"sqlite://{tmp_path}/cache.db"


def outcomes(inst: Any) -> dict[str, float]:
    totals: dict[str, float] = {}
    for attributes, point in inst.metric_points(REQUESTS):
        totals[attributes[OUTCOME]] = totals.get(attributes[OUTCOME], 0) + point.value
    return totals


def cache_spans(inst: Any, outcome: str) -> list[Any]:
    return [s for s in inst.client_spans() if s.attributes.get(OUTCOME) == outcome]


def test_a_fresh_response_is_a_hit_with_no_attempt_and_no_breaker_admission(instrument, fault_server, caller, storage):
    inst = instrument(cache=storage, breaker_threshold=1)
    url = f"{fault_server.url}/cache/a?cc=max-age%3D60"
    started = time.time()
    first, second = caller.get(url), caller.get(url)
    elapsed = time.time() - started
    assert first.json() == second.json() == {"key": "a", "served": 1}
    assert len(fault_server.requests) == 1  # the downstream saw one request
    assert first.extensions["otel_integration.cache"] == {"outcome": "miss"}
    assert second.extensions["otel_integration.cache"] == {"outcome": "hit"}
    # Age counts whole seconds from the response's Date (itself whole seconds): a second boundary
    # between the two calls makes it 1 even when they are milliseconds apart.
    assert 0 <= int(second.headers["age"]) <= elapsed + 1
    assert outcomes(inst) == {"miss": 1, "hit": 1}
    (attempt,) = inst.attempt_spans(fault_server.port)  # one physical attempt: the miss
    assert attempt.attributes[OUTCOME] == "miss"
    (hit,) = cache_spans(inst, "hit")
    assert hit.kind.name == "CLIENT" and hit.attributes["http.response.status_code"] == 200
    # A hit needs no admission: with the breaker open, the stored response still answers.
    breaker = inst.breaker(fault_server)
    breaker.settle(breaker.admit(), Outcome.FAILURE)
    assert breaker.state() == "open"
    assert caller.get(url).json() == {"key": "a", "served": 1}
    assert inst.counter_total("http.client.circuit_breaker.rejections") == 0


def test_breaker_open_with_a_stored_response_serves_it_stale(instrument, fault_server, caller, storage):
    inst = instrument(cache=storage, breaker_threshold=1, cache_max_stale=300.0)
    # max-age=0: stale at once; after the first request the downstream answers 503.
    url = f"{fault_server.url}/cache/b?cc=max-age%3D0&fail_after=1"
    assert caller.get(url).json() == {"key": "b", "served": 1}
    # The retries end on 503 (the breaker opened on the first one): the stored response answers instead.
    after_retries = caller.get(url)
    assert after_retries.status_code == 200 and after_retries.json() == {"key": "b", "served": 1}
    assert after_retries.extensions["otel_integration.cache"]["outcome"] == "stale"
    assert after_retries.extensions["otel_integration.cache"]["error"] == "503"
    assert int(after_retries.headers["age"]) >= 0
    assert inst.breaker(fault_server).state() == "open"
    requests_before = len(fault_server.requests)
    # Now refused by the open breaker, with no I/O: stale again.
    refused = caller.get(url)
    assert refused.json() == {"key": "b", "served": 1}
    assert refused.extensions["otel_integration.cache"] == {
        "outcome": "stale", "age": int(refused.headers["age"]), "error": "CircuitOpenError",
    }
    assert len(fault_server.requests) == requests_before
    assert outcomes(inst) == {"miss": 1, "stale": 2}
    stale = cache_spans(inst, "stale")
    assert [s.attributes["http.client.cache.stale_if_error"] for s in stale] == ["503", "CircuitOpenError"]
    assert all(s.attributes["http.response.header.age"] == (str(a),) for s, a in zip(stale, [
        int(after_retries.headers["age"]), int(refused.headers["age"])]))
    # The refused call's own span is there too, marked a miss.
    rejected = [s for s in inst.client_spans() if s.attributes.get("error.type") == "CircuitOpenError"]
    assert [s.attributes[OUTCOME] for s in rejected] == ["miss"]


def test_breaker_open_without_a_stored_response_raises_as_before(instrument, fault_server, caller, storage):
    inst = instrument(cache=storage, breaker_threshold=1)
    url = f"{fault_server.url}/cache/c?fail_after=0&status=503"
    assert caller.get(url).status_code == 503  # nothing stored: the caller gets the 503
    with pytest.raises(CircuitOpenError):
        caller.get(url)
    assert outcomes(inst) == {"miss": 2}


def test_no_store_is_never_stored_nor_served_stale(instrument, fault_server, caller, storage):
    inst = instrument(cache=storage, breaker_threshold=1, cache_ttl=600.0)
    url = f"{fault_server.url}/cache/d?cc=no-store&fail_after=2"
    assert caller.get(url).json()["served"] == 1
    assert caller.get(url).json()["served"] == 2  # not stored: the downstream answered again
    assert caller.get(url).status_code == 503
    with pytest.raises(CircuitOpenError):
        caller.get(url)
    assert outcomes(inst) == {"miss": 4}


@pytest.mark.parametrize("directive", ["no-cache", "must-revalidate", "proxy-revalidate", "s-maxage%3D0"])
def test_what_forbids_a_stale_answer_is_obeyed(instrument, fault_server, caller, directive):
    instrument(cache="memory", breaker_threshold=1)
    url = f"{fault_server.url}/cache/e?cc=max-age%3D0%2C%20{directive}&fail_after=1"
    assert caller.get(url).status_code == 200
    assert caller.get(url).status_code == 503


@pytest.mark.parametrize("status", [500, 502, 504])
def test_each_error_status_of_rfc_5861_is_answered_stale(instrument, fault_server, caller, status):
    instrument(cache="memory")
    url = f"{fault_server.url}/cache/s{status}?cc=max-age%3D0&fail_after=1&status={status}"
    assert caller.get(url).status_code == 200
    stale = caller.get(url)
    assert stale.status_code == 200 and stale.extensions["otel_integration.cache"]["error"] == str(status)


def test_a_client_error_is_not_replaced(instrument, fault_server, caller):
    instrument(cache="memory")
    url = f"{fault_server.url}/cache/t?cc=max-age%3D0&fail_after=1&status=404"
    assert caller.get(url).status_code == 200
    assert caller.get(url).status_code == 404  # the downstream answered: not an error of RFC 5861


def test_head_is_cached_too(instrument, fault_server, caller):
    instrument(cache="memory")
    url = f"{fault_server.url}/cache/u?cc=max-age%3D60"
    statuses = [caller.request("HEAD", url).status_code for _ in range(2)]
    assert statuses == [200, 200] and len(fault_server.requests) == 1


def test_sync_and_async_clients_share_the_memory_cache(instrument, fault_server):
    instrument(cache="memory")
    url = f"{fault_server.url}/cache/v?cc=max-age%3D60"
    sync, other = Caller("sync"), Caller("async")
    try:
        assert sync.get(url).json() == other.get(url).json() == {"key": "v", "served": 1}
    finally:
        sync.close(), other.close()


def test_max_stale_bounds_how_stale_an_answer_may_be(instrument, fault_server, caller):
    # Date 100 s ago, max-age=0: stale for 100 s when stored.
    url = f"{fault_server.url}/cache/f?cc=max-age%3D0&date_ago=100&fail_after=1"
    instrument(cache="memory", breaker_threshold=1, cache_max_stale=50.0)
    assert caller.get(url).status_code == 200
    assert caller.get(url).status_code == 503  # stale for longer than 50 s: the error stands


def test_within_max_stale_the_answer_says_its_age(instrument, fault_server, caller):
    url = f"{fault_server.url}/cache/g?cc=max-age%3D0&date_ago=100&fail_after=1"
    instrument(cache="memory", breaker_threshold=1, cache_max_stale=200.0)
    assert caller.get(url).status_code == 200
    stale = caller.get(url)
    assert stale.status_code == 200 and 100 <= int(stale.headers["age"]) < 200


def test_max_stale_zero_turns_stale_if_error_off(instrument, fault_server, caller):
    instrument(cache="memory", breaker_threshold=1, cache_max_stale=0.0)
    url = f"{fault_server.url}/cache/h?cc=max-age%3D0&fail_after=1"
    assert caller.get(url).status_code == 200
    assert caller.get(url).status_code == 503


def test_transport_errors_after_the_retries_are_answered_stale(instrument, fault_server, caller):
    inst = instrument(cache="memory", breaker_threshold=100)
    url = f"{fault_server.url}/cache/i?cc=max-age%3D0&fail_after=1&status=reset"
    assert caller.get(url).status_code == 200
    stale = caller.get(url)
    assert stale.extensions["otel_integration.cache"]["outcome"] == "stale"
    assert stale.extensions["otel_integration.cache"]["error"] in ("RemoteProtocolError", "ReadError")
    assert len(inst.attempt_spans(fault_server.port)) == 1 + 3  # the three attempts were made first


def test_the_default_ttl_makes_responses_without_cache_headers_fresh(instrument, fault_server, caller):
    instrument(cache="memory", cache_ttl=300.0)
    url = f"{fault_server.url}/cache/j"
    first, second = caller.get(url), caller.get(url)
    assert "cache-control" not in first.headers  # the caller of the miss sees what the downstream sent
    assert second.extensions["otel_integration.cache"] == {"outcome": "hit"}
    assert second.headers["cache-control"] == "max-age=300"  # the stored copy's freshness
    assert len(fault_server.requests) == 1


def test_without_a_default_ttl_they_are_kept_for_stale_if_error_only(instrument, fault_server, caller):
    inst = instrument(cache="memory", breaker_threshold=1)
    url = f"{fault_server.url}/cache/k?fail_after=2"
    assert caller.get(url).json()["served"] == 1
    assert caller.get(url).json()["served"] == 2  # not fresh: asked again
    stale = caller.get(url)
    # One of the two stored answers: usually the second, which replaced the first; in about one run
    # in ten hishel still held the first when the downstream failed (noted in issue 14's note).
    assert stale.json()["served"] in (1, 2) and stale.extensions["otel_integration.cache"]["outcome"] == "stale"
    assert outcomes(inst) == {"miss": 2, "stale": 1}


def test_a_service_has_its_own_default_ttl(instrument, fault_server, caller):
    services = {"catalog": f"127.0.0.1:{fault_server.port}"}
    instrument(cache="memory", services=services, service_overrides={"catalog": {"cache_ttl": 600.0}})
    second = [caller.get(f"{fault_server.url}/cache/l") for _ in range(2)][1]
    assert second.headers["cache-control"] == "max-age=600"


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer {who}"}, {"Cookie": "session={who}"}, {"Proxy-Authorization": "Basic {who}"}],
    ids=["authorization", "cookie", "proxy-authorization"],
)
def test_requests_with_credentials_are_never_shared_across_callers(instrument, fault_server, caller, headers):
    inst = instrument(cache="memory", breaker_threshold=1)
    # Even a response that says public is not stored for a request with credentials.
    url = f"{fault_server.url}/cache/m?cc=public%2C%20max-age%3D60&fail_after=2"
    alice = caller.get(url, headers={k: v.format(who="alice") for k, v in headers.items()})
    bob = caller.get(url, headers={k: v.format(who="bob") for k, v in headers.items()})
    assert (alice.json()["served"], bob.json()["served"]) == (1, 2)
    assert caller.get(url).status_code == 503  # and nothing stored to answer a later caller with
    assert outcomes(inst) == {"bypass": 2, "miss": 1}
    assert [s.attributes[OUTCOME] for s in inst.attempt_spans(fault_server.port)[:2]] == ["bypass", "bypass"]


def test_a_request_the_auth_forwarding_would_authorize_is_not_cached(instrument, fault_server, caller):
    instrument(cache="memory", auth_forward_to=frozenset({f"127.0.0.1:{fault_server.port}"}))
    url = f"{fault_server.url}/cache/n?cc=max-age%3D60"
    for who in ("alice", "bob"):
        token = otel_context.attach(auth.set_incoming_authorization(f"Bearer {who}"))
        try:
            assert caller.get(url).status_code == 200
        finally:
            otel_context.detach(token)
    assert [r.headers.get("authorization") for r in fault_server.requests] == ["Bearer alice", "Bearer bob"]


def test_an_unsafe_request_invalidates_the_stored_response(instrument, fault_server, caller):
    instrument(cache="memory")
    url = f"{fault_server.url}/cache/o?cc=max-age%3D60"
    assert caller.get(url).json()["served"] == 1
    assert caller.request("POST", url, content=b"x").status_code == 200
    assert caller.get(url).json()["served"] == 3  # RFC 9111 §4.4: the POST removed the entry


def test_a_failing_health_probe_is_answered_stale(instrument, fault_server, caller, clock):
    with QuickFaultServer() as probe_target:
        inst = instrument(
            clock=clock, cache="memory", services={"svc": f"127.0.0.1:{fault_server.port}"},
            health_probes={"svc": f"{probe_target.url}/cache/probe?fail_after=1"}, health_probe_ttl=30.0,
        )
        probe = inst.layer.downstreams.probes["svc"]
        wait_until(lambda: probe.healthy is True, what="first probe result")
        url = f"{fault_server.url}/cache/p?cc=max-age%3D0"
        assert caller.get(url).status_code == 200
        clock.advance(31)
        probe.status()  # the refresh, in the background; the probe target answers 503 now
        wait_until(lambda: probe.healthy is False, what="failing probe result")
        stale = caller.get(url)
    assert stale.extensions["otel_integration.cache"]["error"] == "DownstreamUnhealthyError"
    assert len(fault_server.requests) == 1


def test_an_unusable_storage_leaves_requests_uncached_and_logs_once(instrument, fault_server, caller, caplog, tmp_path):
    (tmp_path / "dir.db").mkdir()  # a directory where the database file should be
    instrument(cache=f"sqlite://{tmp_path}/dir.db")
    with caplog.at_level(logging.ERROR, logger="otel_integration._client.cache"):
        statuses = [caller.get(f"{fault_server.url}/cache/q?cc=max-age%3D60").status_code for _ in range(2)]
    assert statuses == [200, 200] and len(fault_server.requests) == 2
    assert len([r for r in caplog.records if "could not open the cache" in r.getMessage()]) == 1


def test_off_by_default(instrument, fault_server, caller):
    inst = instrument()
    assert inst.layer.cache is None
    url = f"{fault_server.url}/cache/r?cc=max-age%3D60"
    caller.get(url), caller.get(url)
    assert len(fault_server.requests) == 2 and outcomes(inst) == {}
