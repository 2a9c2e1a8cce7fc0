"""The two private-API shortcuts of the client path agree with the public API they replace.

`_client/headers.py` reads and appends the request-ID header in httpx's own
header list; `_telemetry.add_clean_attributes` writes attributes into the SDK
span's dict (the client's attempt spans, the server's SERVER spans). Each is checked against the public call it stands for, on the
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
from otel_integration._telemetry import add_clean_attributes

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


# --- the upstream httpx instrumentation's header normalisation (`upstream_speedups.py`) ---

import opentelemetry.instrumentation.httpx as upstream_httpx  # noqa: E402
from opentelemetry.instrumentation.httpx.version import __version__ as upstream_version  # noqa: E402

from otel_integration._client import upstream_speedups  # noqa: E402
from otel_integration._upstream_patch import TESTED  # noqa: E402

upstream_normalize = upstream_httpx._normalize_headers  # the module's own, before any instrumentor ran
ascii_values = st.from_regex(r"[ -~]{0,12}", fullmatch=True)  # printable ASCII: commas and spaces included
ascii_headers = st.lists(st.tuples(st.sampled_from([*NAMES, "Accept-Encoding", "Set-Cookie"]), ascii_values), max_size=8)
any_headers = st.lists(
    st.tuples(
        st.sampled_from([*NAMES, "Set-Cookie", "\u00c9-Header".encode()]),
        st.one_of(ascii_values, st.binary(max_size=6)),  # non-ASCII headers go to the upstream function
    ),
    max_size=8,
)
fast = upstream_speedups.fast_normalize(upstream_normalize)


def _same_as_upstream(headers: httpx.Headers) -> None:
    expected = upstream_normalize(headers, httpx)
    got = fast(headers, httpx)
    assert got == expected
    assert list(got) == list(expected)  # the same order of names


@given(ascii_headers)
def test_the_linear_normalisation_gives_the_upstream_result(items):
    headers = httpx.Headers(items)
    assert headers.encoding == "ascii"  # the linear path, not the fallback
    _same_as_upstream(headers)


@given(any_headers)
def test_any_headers_httpx_accepts_normalise_as_upstream(items):
    try:
        headers = httpx.Headers(items)
    except (UnicodeEncodeError, TypeError):  # what httpx refuses is not ours to normalise
        return
    _same_as_upstream(headers)


@pytest.mark.parametrize(
    "carrier",
    [None, {"X-A": "1", "x-b": ["2", "3"]}, [(b"X-A", b"1"), (b"x-a", b"2")], httpx.Headers({"X-A": "caf\u00e9".encode()})],
    ids=["none", "dict", "raw list", "non-ASCII Headers"],
)
def test_other_carriers_go_to_the_upstream_function(carrier):
    assert fast(carrier, httpx) == upstream_normalize(carrier, httpx)


def test_the_instrumentor_installs_it_and_gives_the_module_back():
    from otel_integration import OtelIntegrationInstrumentor
    from otel_integration._settings import Settings

    assert upstream_httpx._normalize_headers is upstream_normalize
    ours = OtelIntegrationInstrumentor()
    ours.instrument(settings=Settings())
    try:
        assert upstream_httpx._normalize_headers is not upstream_normalize
        assert upstream_httpx._normalize_headers.__wrapped__ is upstream_normalize
    finally:
        ours.uninstrument()
    assert upstream_httpx._normalize_headers is upstream_normalize


def test_switched_off_the_upstream_module_is_left_as_it_is(instrument):
    instrument(upstream_speedups=False)
    assert upstream_httpx._normalize_headers is upstream_normalize


def test_captured_headers_still_reach_the_span(instrument, fault_server, monkeypatch):
    """Header capture, the one reader of the normalised headers, sees the same values through the speedup."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "x-custom")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", "content-type")
    instrumented = instrument()
    assert upstream_httpx._normalize_headers is not upstream_normalize
    httpx.get(fault_server.url + "/ok", headers=[("X-Custom", "a, b"), ("x-custom", "c")])
    (span,) = instrumented.client_spans()
    assert span.attributes["http.request.header.x_custom"] == ("a", "b", "c")
    assert span.attributes["http.response.header.content_type"]
