"""The cheaper replacements of upstream per-request helpers (`_server/upstream.py`): applied, and equivalent."""

from __future__ import annotations

import functools
import gc
import types
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import opentelemetry.instrumentation.asgi as upstream_asgi
import opentelemetry.instrumentation.fastapi as upstream_fastapi
import opentelemetry.instrumentation.flask as upstream_flask
import opentelemetry.instrumentation.utils as upstream_utils
import opentelemetry.instrumentation.wsgi as upstream_wsgi
import opentelemetry.util.http as util_http
from otel_integration._server import shield, upstream
from otel_integration._server.correlation import ensure_span_processor
from otel_integration._server.instrumentor import ServerInstrumentor
from otel_integration._settings import Settings
from otel_integration._telemetry import StartOnlySpanProcessor

_ORIGINAL_GET = upstream_asgi.ASGIGetter.__dict__["get"]
SANITIZING = (upstream_asgi, upstream_wsgi, upstream_flask, upstream_fastapi)


STARTING = (upstream_asgi, upstream_flask)  # the instrumentations that set the start attributes again


def current() -> tuple[Any, ...]:
    """The upstream helpers `_server/upstream.py` may replace, as the modules hold them now."""
    return (
        upstream_asgi.ASGIGetter.__dict__["get"],
        upstream_wsgi.collect_custom_request_headers_attributes,
        upstream_wsgi.collect_custom_response_headers_attributes,
        *(module.sanitize_method for module in SANITIZING),
        *(module._start_internal_or_server_span for module in STARTING),
    )


def test_upstream_speedups_apply() -> None:
    """Fails when the pinned upstream versions move past `_upstream_patch.TESTED`: check the
    replacements still mirror upstream, then add the version."""
    originals = current()
    assert all(module.sanitize_method is util_http.sanitize_method for module in SANITIZING)
    assert all(module._start_internal_or_server_span is upstream_utils._start_internal_or_server_span for module in STARTING)
    instrumentor = ServerInstrumentor()
    instrumentor.instrument(settings=Settings())
    try:
        assert upstream_asgi.ASGIGetter.__dict__["get"].__wrapped__ is originals[0]
        assert upstream_wsgi.collect_custom_request_headers_attributes.__wrapped__ is originals[1]
        assert upstream_wsgi.collect_custom_response_headers_attributes.__wrapped__ is originals[2]
        assert all(module.sanitize_method is upstream.sanitize_method for module in SANITIZING)
        assert all(
            module._start_internal_or_server_span.__wrapped__ is upstream_utils._start_internal_or_server_span
            for module in STARTING
        )
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
    upstream.install_start_span(module)()
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


# --- the start attributes, set again by the asgi and flask middlewares ------------------------


@functools.cache
def _tracer(max_attribute_length: int | None = None, max_span_attributes: int | None = None) -> Any:
    """One provider per set of limits: a provider registers its own shutdown at exit."""
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider

    limits = SpanLimits(max_attribute_length=max_attribute_length, max_span_attributes=max_span_attributes)
    return TracerProvider(span_limits=limits, shutdown_on_exit=False).get_tracer("t")


_pool = st.sampled_from(["a", "bb", "x" * 9, 0, 7, 2.5, True, False, ["l", "m"], ("t",), [1, 2], None, {"no": 1}, b"raw"])
_ops = st.lists(st.tuples(st.sampled_from(["k1", "k2", "k3", "k4", "", 5, ("k1",)]), _pool), max_size=12)


@settings(deadline=None)  # a span per example, on a busy machine
@given(start=st.dictionaries(st.sampled_from(["k1", "k2", "k3"]), _pool, max_size=3), ops=_ops, end_at=st.integers(0, 12))
def test_setting_attributes_again_ends_as_the_sdk_ends(start: dict[str, Any], ops: list[tuple[str, Any]], end_at: int) -> None:
    """Whatever is set, again or anew, valid or not, before or after the span ends: the same attributes
    and the same dropped count as the SDK's own `set_attribute` (the same value objects are shared)."""
    for limits in ({}, {"max_attribute_length": 3, "max_span_attributes": 3}):
        tracer = _tracer(**limits)
        theirs, ours = tracer.start_span("s", attributes=dict(start)), tracer.start_span("s", attributes=dict(start))
        upstream.skip_held_attributes(ours)
        for span in (theirs, ours):
            for key, value in start.items():  # what the middlewares do first
                span.set_attribute(key, value)
            for i, (key, value) in enumerate(ops):
                if i == end_at:
                    span.end()
                span.set_attribute(key, value)
        assert dict(ours.attributes) == dict(theirs.attributes)
        assert ours.dropped_attributes == theirs.dropped_attributes


def test_a_held_value_is_not_validated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import opentelemetry.attributes as attributes

    span = _tracer().start_span("s", attributes={"url.path": "/x", "http.response.status_code": 200})
    upstream.skip_held_attributes(span)
    cleaned: list[Any] = []
    original = attributes._clean_attribute_value
    monkeypatch.setattr(attributes, "_clean_attribute_value", lambda value, *a: cleaned.append(value) or original(value, *a))
    span.set_attribute("url.path", span.attributes["url.path"])
    assert cleaned == []
    span.set_attribute("url.path", "/y")  # another value: the SDK's path
    assert cleaned == ["/y"] and span.attributes["url.path"] == "/y"


def test_setting_a_held_value_on_an_ended_span_still_warns(caplog: pytest.LogCaptureFixture) -> None:
    span = _tracer().start_span("s", attributes={"k": "v"})
    upstream.skip_held_attributes(span)
    span.end()
    span.set_attribute("k", span.attributes["k"])
    assert "Setting attribute on ended span." in caplog.text


# Module-level, so that the span (through its processors) cannot reach it: `_reaches_itself`
# does not follow globals.
_STARTED: list[Any] = []


class _StartRecorder(StartOnlySpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        _STARTED.append(span)


def _server_span_attributes(
    framework: str, speedups: bool, monkeypatch: pytest.MonkeyPatch, record_starts: bool = False
) -> tuple[dict[str, Any], int]:
    """The SERVER span of one request through the framework's upstream instrumentation, with our
    server instrumentor on; and how many attribute values the SDK validated on the way. With
    `record_starts`, every span goes into `_STARTED` as it starts."""
    import opentelemetry.attributes as attributes
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.test_server import run_asgi, run_wsgi

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ensure_span_processor(provider)  # the launcher adds it to the global provider
    if record_starts:
        provider.add_span_processor(_StartRecorder())
    cleaned = [0]
    original = attributes._clean_attribute_value

    def counting(*args: Any) -> Any:
        cleaned[0] += 1
        return original(*args)

    instrumentor = ServerInstrumentor()
    instrumentor.instrument(settings=Settings(upstream_speedups=speedups))
    try:
        if framework == "fastapi":
            from fastapi import FastAPI

            app = FastAPI()
            app.get("/items/{item}")(lambda item: {"item": item})
            upstream_fastapi.FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
            monkeypatch.setattr(attributes, "_clean_attribute_value", counting)
            status = run_asgi(app, "/items/7", headers=[("User-Agent", "t/1"), ("X-Request-ID", "speed-1")])[0]
        else:
            import flask

            app = flask.Flask("t")
            app.get("/items/<item>")(lambda item: {"item": item})
            upstream_flask.FlaskInstrumentor.instrument_app(app, tracer_provider=provider)
            monkeypatch.setattr(attributes, "_clean_attribute_value", counting)
            status = run_wsgi(app, "/items/7", headers={"User-Agent": "t/1", "X-Request-ID": "speed-1"})[0]
        monkeypatch.setattr(attributes, "_clean_attribute_value", original)
    finally:
        instrumentor.uninstrument()
    assert status == 200
    (server,) = [span for span in exporter.get_finished_spans() if span.kind.name == "SERVER"]
    return dict(server.attributes or {}), cleaned[0]


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_server_spans_hold_the_same_attributes_either_way(framework: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each start attribute is validated once with the speedups on, twice off; the span ends the same."""
    skipped: list[str] = []
    unless_held = upstream.set_attribute_unless_held

    def watched(span_reference: Any, key: str, value: Any) -> None:
        if span_reference()._attributes._dict.get(key) is value:
            skipped.append(key)
        unless_held(span_reference, key, value)

    monkeypatch.setattr(upstream, "set_attribute_unless_held", watched)
    fast, fast_cleaned = _server_span_attributes(framework, True, monkeypatch)
    slow, slow_cleaned = _server_span_attributes(framework, False, monkeypatch)
    assert fast == slow and fast["http.request.header.x-request-id"] == ("speed-1",)
    # Every start attribute set again (method, scheme, port, user agent, route, ...) was skipped, and that
    # is the only validation saved.
    assert {"http.request.method", "url.scheme", "http.route"} <= set(skipped)
    assert slow_cleaned - fast_cleaned == len(skipped)


def _reaches_itself(obj: Any) -> bool:
    """Whether `obj` is in a reference cycle: reachable from what it refers to. Modules, classes and
    functions' globals are not followed (through them, everything reaches everything)."""
    seen: set[int] = set()
    stack = list(gc.get_referents(obj))
    while stack:
        item = stack.pop()
        if item is obj:
            return True
        if id(item) in seen or isinstance(item, (types.ModuleType, type)):
            continue
        seen.add(id(item))
        if isinstance(item, types.FunctionType):  # what it closes over, not its globals
            stack.extend([*(item.__closure__ or ()), *(item.__defaults__ or ())])
        else:
            stack.extend(gc.get_referents(item))
    return False


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_the_server_span_is_in_no_reference_cycle(framework: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SERVER span's instance-level set_attribute holds it weakly: reference counting frees
    the span, where a bound method would make every SERVER span garbage for the collector."""
    _STARTED.clear()
    try:
        _server_span_attributes(framework, True, monkeypatch, record_starts=True)
        (server,) = [span for span in _STARTED if span.kind.name == "SERVER"]
    finally:
        _STARTED.clear()
    assert "set_attribute" in vars(server)  # the speedup applied
    assert not _reaches_itself(server)
