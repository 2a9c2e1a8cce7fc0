"""The cheaper replacements of upstream per-request helpers (`_server/upstream.py`): applied, and equivalent."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import opentelemetry.instrumentation.asgi as upstream_asgi
import opentelemetry.instrumentation.fastapi as upstream_fastapi
import opentelemetry.instrumentation.flask as upstream_flask
import opentelemetry.instrumentation.wsgi as upstream_wsgi
import opentelemetry.util.http as util_http
from otel_integration._server import shield, upstream
from otel_integration._server.instrumentor import ServerInstrumentor
from otel_integration._settings import Settings

_ORIGINAL_GET = upstream_asgi.ASGIGetter.__dict__["get"]
SANITIZING = (upstream_asgi, upstream_wsgi, upstream_flask, upstream_fastapi)


def current() -> tuple[Any, ...]:
    """The upstream helpers `_server/upstream.py` may replace, as the modules hold them now."""
    return (
        upstream_asgi.ASGIGetter.__dict__["get"],
        upstream_wsgi.collect_custom_request_headers_attributes,
        upstream_wsgi.collect_custom_response_headers_attributes,
        *(module.sanitize_method for module in SANITIZING),
    )


def test_upstream_speedups_apply() -> None:
    """Fails when the pinned upstream versions move past `_upstream_patch.TESTED`: check the
    replacements still mirror upstream, then add the version."""
    originals = current()
    assert all(module.sanitize_method is util_http.sanitize_method for module in SANITIZING)
    instrumentor = ServerInstrumentor()
    instrumentor.instrument(settings=Settings())
    try:
        assert upstream_asgi.ASGIGetter.__dict__["get"].__wrapped__ is originals[0]
        assert upstream_wsgi.collect_custom_request_headers_attributes.__wrapped__ is originals[1]
        assert upstream_wsgi.collect_custom_response_headers_attributes.__wrapped__ is originals[2]
        assert all(module.sanitize_method is upstream.sanitize_method for module in SANITIZING)
    finally:
        instrumentor.uninstrument()
    assert current() == originals


class _OtherVersion:
    """A module of an untested upstream version: left as it is."""

    class version:  # noqa: N801 - mirrors the module attribute
        __version__ = "0.1b0"

    class ASGIGetter:
        def get(self, carrier: Any, key: str) -> None:
            return None

    def collect_custom_request_headers_attributes(self, environ: Any) -> None:
        return None

    def collect_custom_response_headers_attributes(self, headers: Any) -> None:
        return None


def test_untested_versions_keep_their_functions() -> None:
    module = _OtherVersion()
    before = (module.ASGIGetter.__dict__["get"], module.collect_custom_request_headers_attributes)
    upstream.install_asgi(module)()
    upstream.install_wsgi(module)()
    assert (module.ASGIGetter.__dict__["get"], module.collect_custom_request_headers_attributes) == before


_names = st.one_of(
    st.sampled_from([b"host", b"Host", b"HOST", b"user-agent", b"traceparent", b"\xe2\x84\xaaey", b"k\xffey", b"\xc4\xb0d", b"a\x00host", b"host\x00", b""]),
    st.binary(max_size=6),
    st.sampled_from(["host", "Host", "K\u212aey"]),
    st.builds(bytearray, st.sampled_from([b"host", b"Host", b"other"])),
)
_values = st.one_of(st.binary(max_size=8), st.sampled_from([b"v", b"\\xff\\x", b"caf\xc3\xa9"]))
_keys = st.sampled_from(["host", "Host", "user-agent", "traceparent", "key", "k\xffey", "i\u0307d", "", "\u212aey", "a\x00host"])


@pytest.mark.parametrize("shielded", [True, False])
@given(headers=st.lists(st.tuples(_names, _values), max_size=5), key=_keys)
def test_asgi_getter_answers_as_upstream(shielded: bool, headers: list[tuple[Any, bytes]], key: str) -> None:
    decoder = upstream_asgi._decode_header_item
    upstream_asgi._decode_header_item = shield.decode_header_item if shielded else shield._state["original"] or decoder
    try:
        fast = upstream.asgi_getter(upstream_asgi)
        carrier = {"headers": headers}
        try:
            expected: Any = _ORIGINAL_GET(upstream_asgi.asgi_getter, carrier, key)
        except Exception as error:  # noqa: BLE001 - the upstream decoder may raise: so must we
            with pytest.raises(type(error)):
                fast(upstream_asgi.asgi_getter, carrier, key)
            return
        assert fast(upstream_asgi.asgi_getter, carrier, key) == expected
    finally:
        upstream_asgi._decode_header_item = decoder


def test_asgi_getter_without_headers() -> None:
    fast = upstream.asgi_getter(upstream_asgi)
    assert fast(None, {}, "host") is None
    assert fast(None, {"headers": []}, "host") is None
    assert fast(None, {"headers": [(b"a", b"1")]}, "host") is None


def test_wsgi_custom_headers_are_still_captured_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    restore = upstream.install_wsgi(upstream_wsgi)
    try:
        environ = {"HTTP_X_THING": "1", "HTTP_AUTHORIZATION": "Bearer s"}
        response = [("X-Out", "2"), ("Set-Cookie", "a=b")]
        assert upstream_wsgi.collect_custom_request_headers_attributes(environ) == {}
        assert upstream_wsgi.collect_custom_response_headers_attributes(response) == {}
        monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-thing,authorization")
        monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "x-out,set-cookie")
        monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "authorization,set-cookie")
        assert upstream_wsgi.collect_custom_request_headers_attributes(environ) == {
            "http.request.header.x_thing": ["1"],
            "http.request.header.authorization": ["[REDACTED]"],
        }
        assert upstream_wsgi.collect_custom_response_headers_attributes(response) == {
            "http.response.header.x_out": ["2"],
            "http.response.header.set_cookie": ["[REDACTED]"],
        }
    finally:
        restore()
    assert not hasattr(upstream_wsgi.collect_custom_request_headers_attributes, "__wrapped__")


_METHOD_CASES = ["GET", "get", "Patch", "QUERY", "PROPFIND", "", " GET", "g\u0117t", "\u00df"]


@pytest.mark.parametrize("capture_all", [None, "", "1", "true"])
def test_sanitize_method_answers_as_upstream(capture_all: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if capture_all is None:
        monkeypatch.delenv("OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS", raising=False)
    else:
        monkeypatch.setenv("OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS", capture_all)
    for method in [*_METHOD_CASES, None]:
        assert upstream.sanitize_method(method) == util_http.sanitize_method(method), method


def test_sanitize_method_of_another_util_http_version_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(util_http.version, "__version__", "0.1b0")
    module = _OtherVersion()
    module.sanitize_method = util_http.sanitize_method  # type: ignore[attr-defined]
    upstream.install_sanitize_method(module)
    assert module.sanitize_method is util_http.sanitize_method  # type: ignore[attr-defined]


def test_environment_reader_follows_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_env` reads CPython's own dict behind os.environ: fails if that stops being so."""
    import os

    assert isinstance(os.environ._data, dict)  # type: ignore[attr-defined]
    read = upstream._env("OTEL_INTEGRATION_TEST_ENV_READER")
    monkeypatch.delenv("OTEL_INTEGRATION_TEST_ENV_READER", raising=False)
    assert not read()
    monkeypatch.setenv("OTEL_INTEGRATION_TEST_ENV_READER", "")
    assert not read()
    monkeypatch.setenv("OTEL_INTEGRATION_TEST_ENV_READER", "x")
    assert read()


def test_switched_off_the_upstream_server_helpers_are_left_as_they_are() -> None:
    before = current()
    instrumentor = ServerInstrumentor()
    instrumentor.instrument(settings=Settings(upstream_speedups=False))
    try:
        assert current() == before
    finally:
        instrumentor.uninstrument()
