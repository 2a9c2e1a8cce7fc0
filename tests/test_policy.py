"""Unit tests of otel_integration._client.policy: pure functions, no I/O."""

from __future__ import annotations

import email.utils
import random

import httpx
import pytest

from otel_integration._client import policy
from otel_integration.errors import CircuitOpenError, DownstreamUnhealthyError

NOW = 1_800_000_000.0


def req(method: str = "GET", **kwargs) -> httpx.Request:
    return httpx.Request(method, "http://svc.test/x", **kwargs)


def resp(status: int, retry_after: str | bytes | None = None) -> httpx.Response:
    headers = [] if retry_after is None else [(b"retry-after", retry_after if isinstance(retry_after, bytes) else retry_after.encode())]
    return httpx.Response(status, headers=headers)


# --- idempotency ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"])
def test_idempotent_methods(method):
    assert policy.is_idempotent(req(method))


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT"])
def test_non_idempotent_methods(method):
    assert not policy.is_idempotent(req(method))


@pytest.mark.parametrize("name", ["Idempotency-Key", "idempotency-key", "IDEMPOTENCY-KEY"])
def test_idempotency_key_makes_any_method_idempotent(name):
    assert policy.is_idempotent(req("POST", headers={name: "abc"}))
    assert policy.is_idempotent(req("PATCH", headers={name: "abc"}))


def test_lowercase_method_is_normalised_by_httpx():
    assert policy.is_idempotent(httpx.Request("get", "http://svc.test/"))


# --- replayable bodies -------------------------------------------------------------


def test_bodies_that_can_be_sent_again():
    assert policy.is_replayable(req())
    assert policy.is_replayable(req("POST", content=b"bytes"))
    assert policy.is_replayable(req("POST", content="text"))
    assert policy.is_replayable(req("POST", json={"a": 1}))
    assert policy.is_replayable(req("POST", data={"a": "1"}))
    assert policy.is_replayable(req("POST", files={"f": ("f.txt", b"data")}))


def test_generator_bodies_are_not_replayable():
    def gen():
        yield b"x"

    async def agen():
        yield b"x"

    assert not policy.is_replayable(req("PUT", content=gen()))
    assert not policy.is_replayable(req("PUT", content=agen()))


# --- retryable errors ----------------------------------------------------------------


@pytest.mark.parametrize("error", [httpx.ConnectError("x"), httpx.ConnectTimeout("x"), httpx.PoolTimeout("x")])
@pytest.mark.parametrize("idempotent", [True, False])
def test_nothing_sent_errors_are_always_retryable(error, idempotent):
    assert policy.retryable_error(error, idempotent)


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout("x"), httpx.WriteTimeout("x"), httpx.ReadError("x"), httpx.WriteError("x"),
     httpx.RemoteProtocolError("x")],
)
def test_maybe_sent_errors_only_when_idempotent(error):
    assert policy.retryable_error(error, True)
    assert not policy.retryable_error(error, False)


@pytest.mark.parametrize(
    "error",
    [
        CircuitOpenError(downstream="svc:80", retry_at=NOW),
        DownstreamUnhealthyError(downstream="svc:80"),
        httpx.UnsupportedProtocol("x"),
        httpx.LocalProtocolError("x"),
        httpx.ProxyError("x"),
        ValueError("x"),
    ],
)
def test_other_errors_are_never_retried(error):
    assert not policy.retryable_error(error, True)


def test_our_fail_fast_errors_are_not_retried_even_though_they_are_transport_errors():
    error = CircuitOpenError(downstream="svc:80", retry_at=NOW)
    assert isinstance(error, httpx.TransportError)
    assert not policy.retryable_error(error, True)


# --- Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_delta_seconds(status):
    assert policy.retry_after_seconds(resp(status, "3")) == 3.0
    assert policy.retry_after_seconds(resp(status, " 7 ")) == 7.0
    assert policy.retry_after_seconds(resp(status, "0")) == 0.0


@pytest.mark.parametrize("status", [200, 500, 502, 504])
def test_retry_after_is_ignored_on_other_statuses(status):
    assert policy.retry_after_seconds(resp(status, "3")) is None


def test_retry_after_http_date():
    future = email.utils.formatdate(NOW + 42, usegmt=True)
    assert policy.retry_after_seconds(resp(503, future), now=NOW) == pytest.approx(42.0)


def test_retry_after_http_date_with_numeric_zone():
    when = email.utils.formatdate(NOW + 10, usegmt=True).replace("GMT", "+0000")
    assert policy.retry_after_seconds(resp(503, when), now=NOW) == pytest.approx(10.0)


def test_retry_after_date_in_the_past_is_zero():
    past = email.utils.formatdate(NOW - 100, usegmt=True)
    assert policy.retry_after_seconds(resp(503, past), now=NOW) == 0.0


def test_retry_after_date_without_zone_is_ignored():
    # "-0000" means "zone unknown": parsedate_to_datetime gives a naive datetime.
    assert policy.retry_after_seconds(resp(503, "Wed, 21 Oct 2026 07:28:00 -0000"), now=NOW) is None


@pytest.mark.parametrize("value", ["", "soon", "-1", "1.5", "1e3", "0x10", "Wed, 99 Foo 2026", "9" * 65, "3 ; x"])
def test_unusable_retry_after_is_ignored(value):
    assert policy.retry_after_seconds(resp(503, value), now=NOW) is None


def test_missing_retry_after_is_none():
    assert policy.retry_after_seconds(resp(503)) is None


@pytest.mark.parametrize("raw", [b"\xb2", b"\xb3", b"\xb9"])  # latin-1 superscript two, three, one
def test_non_ascii_digit_like_retry_after_does_not_raise(raw):
    # httpx decodes header bytes that are not UTF-8 as latin-1: b"\xb2" -> "²",
    # and "²".isdigit() is True but float("²") raises ValueError. A server must
    # not be able to crash the call with a malformed header: ignore it.
    assert policy.retry_after_seconds(resp(503, raw)) is None


# --- exponential backoff -----------------------------------------------------------------


def test_exponential_backoff_without_jitter():
    waits = [policy.exponential_backoff(n, initial=0.1, maximum=1.0, jitter=0) for n in range(1, 7)]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_exponential_backoff_jitter_is_bounded_and_capped():
    random.seed(7)
    for n in range(1, 6):
        for _ in range(50):
            wait = policy.exponential_backoff(n, initial=0.1, maximum=5.0, jitter=0.5)
            base = 0.1 * 2 ** (n - 1)
            assert base <= wait <= base + 0.5
    assert all(policy.exponential_backoff(10, initial=1, maximum=2.0, jitter=1.0) == 2.0 for _ in range(20))


def test_exponential_backoff_huge_retry_number_is_the_maximum():
    assert policy.exponential_backoff(5000, initial=0.1, maximum=3.0, jitter=0) == 3.0
    assert policy.exponential_backoff(5000, initial=0.1, maximum=3.0, jitter=1.0) == 3.0


def test_a_structured_twin_is_judged_as_its_httpx_class():
    """The cache's stale-if-error and a nested layer see the twins (issue 14): a downstream failure stays one."""
    from otel_integration import errors

    twin = errors.ConnectError("refused", downstream="x:1")
    assert policy.fails_downstream(twin) and policy.fails_downstream(httpx.ConnectError("refused"))
    assert not policy.fails_downstream(errors.PoolTimeout("pool full", downstream="x:1"))
    assert not policy.fails_downstream(errors.CircuitOpenError(downstream="x:1", retry_at=None))
