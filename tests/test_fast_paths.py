"""The two private-API shortcuts of the client path agree with the public API they replace.

`_client/headers.py` reads and appends the request-ID header in httpx's own
header list; `tracing.add_clean_attributes` writes attributes into the SDK
span's dict. Each is checked against the public call it stands for, on the
installed httpx and SDK (where the shortcut must be the path taken), and on
objects where it must step aside.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import SpanLimits, TracerProvider

from otel_integration._client.headers import REPEATED, CorrelationHeader
from otel_integration._client.tracing import add_clean_attributes

NAMES = ["X-Request-ID", "x-request-id", "X-REQUEST-ID", "Accept", "X-Other", "X-Request-IDs"]
header_lists = st.lists(st.tuples(st.sampled_from(NAMES), st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True)), max_size=6)


def _public_find(headers: httpx.Headers, name: str) -> str | None:
    values = headers.get_list(name)
    return None if not values else values[0] if len(values) == 1 else REPEATED


def test_the_installed_httpx_keeps_the_list_the_shortcut_reads():
    headers = httpx.Headers({"X-Request-ID": "a"})
    assert type(headers._list) is list
    assert headers._list == [(b"X-Request-ID", b"x-request-id", b"a")]


@given(header_lists)
def test_find_agrees_with_get_list(items):
    headers = httpx.Headers(items)
    found = CorrelationHeader("X-Request-ID").find(headers)
    expected = _public_find(headers, "X-Request-ID")
    assert (found.decode() if isinstance(found, bytes) else found) == expected


@given(header_lists)
def test_add_gives_the_headers_setitem_gives(items):
    items = [(name, value) for name, value in items if name.lower() != "x-request-id"]
    ours, public = httpx.Headers(items), httpx.Headers(items)
    CorrelationHeader("X-Request-ID").add(ours, "0123-abcd")
    public["X-Request-ID"] = "0123-abcd"
    assert ours.raw == public.raw
    assert ours.get("x-request-id") == "0123-abcd"


class _OtherHeaders(httpx.Headers):
    """Headers whose list is not a plain list: what a future httpx might do."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__(items)
        self._list = tuple(self._list)  # type: ignore[assignment]

    def __setitem__(self, key: str, value: str) -> None:
        items = list(self._list)
        self._list = items
        super().__setitem__(key, value)
        self._list = tuple(self._list)  # type: ignore[assignment]


def test_other_header_lists_go_through_the_public_api():
    header = CorrelationHeader("X-Request-ID")
    headers = _OtherHeaders([("Accept", "*/*"), ("x-request-id", "a"), ("X-Request-ID", "b")])
    assert header.find(headers) == REPEATED
    headers = _OtherHeaders([("Accept", "*/*")])
    assert header.find(headers) is None
    header.add(headers, "abc")
    assert headers.get("x-request-id") == "abc"


ATTRIBUTES = {"http.request.header.x-request-id": ("abc",), "http.request.resend_count": 2, "peer.service": "ocr", "flag": True}


def _span(limits: SpanLimits | None = None):  # type: ignore[no-untyped-def]
    provider = TracerProvider(span_limits=limits) if limits else TracerProvider()
    return provider.get_tracer("t").start_span("GET", attributes={"http.request.method": "GET"})


def test_clean_attributes_take_the_shortcut_on_the_installed_sdk():
    span = _span()
    add_clean_attributes(span, dict(ATTRIBUTES))
    assert span._attributes._dict == {"http.request.method": "GET", **ATTRIBUTES}  # the shortcut wrote them
    public = _span()
    public.set_attributes(ATTRIBUTES)
    span.end(), public.end()
    assert dict(span.attributes) == dict(public.attributes)


@pytest.mark.parametrize(
    "limits",
    [SpanLimits(max_span_attribute_length=2), SpanLimits(max_span_attributes=3)],
    ids=["value length limit", "attribute count limit"],
)
def test_with_a_limit_that_could_apply_the_sdk_decides(limits):
    span, public = _span(limits), _span(limits)
    add_clean_attributes(span, dict(ATTRIBUTES))
    public.set_attributes(ATTRIBUTES)
    span.end(), public.end()
    assert dict(span.attributes) == dict(public.attributes)
    assert span.dropped_attributes == public.dropped_attributes


def test_an_ended_span_is_left_to_the_sdk():
    span = _span()
    span.end()
    add_clean_attributes(span, {"peer.service": "ocr"})  # the SDK warns and ignores it
    assert "peer.service" not in span.attributes
