"""Request-ID middleware (ASGI, WSGI) and the launcher hook, in process."""

from __future__ import annotations

import asyncio
import io
import threading
import uuid
from dataclasses import replace
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

from otel_integration._propagation import get_request_id
from otel_integration import RequestIdMiddleware, RequestIdWSGIMiddleware, ServerInstrumentor
from otel_integration._server.correlation import SCOPE_KEY, ensure_span_processor
from otel_integration._settings import Settings

BAD_IDS = ["a\r\nSet-Cookie: x=1", "x" * 10_000, "héllo", "with space", ""]


def run_asgi(app: Any, path: str = "/", headers: list[tuple[str, str | bytes]] | None = None, method: str = "GET"):
    """Call an ASGI app directly: (status, {header: [values]}, body). No httpx involved."""
    raw = [(k.lower().encode(), v if isinstance(v, bytes) else v.encode("latin-1")) for k, v in headers or []]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": raw,
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
    }
    messages: list[dict] = []
    sent_request = False

    async def receive() -> dict:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)

    error: BaseException | None = None

    async def main() -> None:
        nonlocal error
        try:
            await app(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            error = exc

    asyncio.run(main())
    start = next(m for m in messages if m["type"] == "http.response.start")
    response_headers: dict[str, list[str]] = {}
    for k, v in start.get("headers", []):
        response_headers.setdefault(k.decode().lower(), []).append(v.decode("latin-1"))
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], response_headers, body, error


def is_uuid4(value: str) -> bool:
    try:
        return uuid.UUID(value).version == 4
    except ValueError:
        return False


async def plain_app(scope: dict, receive: Any, send: Any) -> None:
    """Answers with the request ID it sees in the context."""
    body = (get_request_id() or "").encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


# --- ASGI middleware --------------------------------------------------------------------


def test_incoming_valid_id_is_used_echoed_and_current() -> None:
    status, headers, body, _ = run_asgi(RequestIdMiddleware(plain_app), headers=[("X-Request-ID", "abc-123")])
    assert status == 200
    assert headers["x-request-id"] == ["abc-123"]
    assert body == b"abc-123"


@pytest.mark.parametrize("name", ["X-Correlation-ID", "X-Trace-ID"])
def test_alternative_incoming_headers(name: str) -> None:
    _, headers, body, _ = run_asgi(RequestIdMiddleware(plain_app), headers=[(name, "corr-1")])
    assert headers["x-request-id"] == ["corr-1"] and body == b"corr-1"


def test_first_valid_header_wins_in_settings_order() -> None:
    _, headers, _, _ = run_asgi(
        RequestIdMiddleware(plain_app),
        headers=[("X-Trace-ID", "trace-1"), ("X-Request-ID", "bad value"), ("X-Correlation-ID", "corr-1")],
    )
    assert headers["x-request-id"] == ["corr-1"]


def test_missing_id_is_generated_uuid4() -> None:
    _, headers, body, _ = run_asgi(RequestIdMiddleware(plain_app))
    assert is_uuid4(headers["x-request-id"][0])
    assert body.decode() == headers["x-request-id"][0]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_incoming_id_is_replaced_never_echoed(bad: str) -> None:
    raw = bad.encode("utf-8")
    seen: list[list] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))
        await plain_app(scope, receive, send)

    _, headers, body, _ = run_asgi(RequestIdMiddleware(app), headers=[("X-Request-ID", raw)])
    assert is_uuid4(headers["x-request-id"][0])
    assert raw not in body or not raw
    # the app sees the generated ID, not the raw header
    assert [v for k, v in seen[0] if k == b"x-request-id"] == [headers["x-request-id"][0].encode()]


def test_custom_header_names_from_settings() -> None:
    settings = replace(Settings(), request_id_header="X-Req", request_id_incoming_headers=("X-Req", "X-Other"))
    _, headers, _, _ = run_asgi(RequestIdMiddleware(plain_app, settings), headers=[("X-Other", "o-1")])
    assert headers["x-req"] == ["o-1"] and "x-request-id" not in headers


def test_app_set_header_is_not_duplicated() -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"X-Request-ID", b"app-own")]})
        await send({"type": "http.response.body", "body": b""})

    _, headers, _, _ = run_asgi(RequestIdMiddleware(app), headers=[("X-Request-ID", "incoming")])
    assert headers["x-request-id"] == ["app-own"]


def test_unhandled_exception_gets_500_with_id_and_is_reraised() -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    status, headers, body, error = run_asgi(RequestIdMiddleware(app), headers=[("X-Request-ID", "err-1")])
    assert status == 500 and headers["x-request-id"] == ["err-1"] and body == b"Internal Server Error"
    assert isinstance(error, RuntimeError)  # the server still sees (and logs) it


def test_context_is_restored_after_the_request() -> None:
    before = otel_context.get_current()
    run_asgi(RequestIdMiddleware(plain_app), headers=[("X-Request-ID", "abc")])
    assert get_request_id() is None and otel_context.get_current() == before


def test_nested_middleware_applies_once() -> None:
    seen: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(scope[SCOPE_KEY])
        await plain_app(scope, receive, send)

    _, headers, _, _ = run_asgi(RequestIdMiddleware(RequestIdMiddleware(app)))
    assert headers["x-request-id"] == seen and len(headers["x-request-id"]) == 1


def test_non_http_scopes_pass_through() -> None:
    called = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    asyncio.run(RequestIdMiddleware(app)({"type": "lifespan"}, None, None))
    assert called == ["lifespan"]


# --- Starlette / FastAPI, outgoing calls, SERVER span ------------------------------------------


def starlette_app(downstream: str) -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def call_async(request: Any) -> Any:
        async with httpx.AsyncClient() as client:
            await client.get(downstream + "/ok?from=async")

        async def in_task() -> None:
            async with httpx.AsyncClient() as client:
                await client.get(downstream + "/ok?from=task")

        await asyncio.create_task(in_task())

        def in_background() -> None:
            with httpx.Client() as client:
                client.get(downstream + "/ok?from=background")

        return JSONResponse({"id": get_request_id()}, background=BackgroundTask(in_background))

    def call_sync(request: Any) -> Any:  # runs in Starlette's thread pool
        with httpx.Client() as client:
            client.get(downstream + "/ok?from=sync")
        return PlainTextResponse(get_request_id() or "")

    async def fail(request: Any) -> Any:
        raise ValueError("unhandled")

    async def not_found(request: Any) -> Any:
        return PlainTextResponse("nope", status_code=404)

    return Starlette(
        routes=[Route("/async", call_async), Route("/sync", call_sync), Route("/fail", fail), Route("/404", not_found)]
    )


@pytest.fixture
def server_instrumented() -> Any:
    instrumentor = ServerInstrumentor()
    instrumentor.instrument(settings=Settings())
    yield instrumentor
    instrumentor.uninstrument()


def test_starlette_zero_code_every_outgoing_call_carries_the_id(instrument: Any, fault_server: Any, server_instrumented: Any) -> None:
    instrument()
    app = starlette_app(fault_server.url)
    status, headers, body, _ = run_asgi(app, "/async", headers=[("X-Request-ID", "req-async")])
    assert status == 200 and headers["x-request-id"] == ["req-async"]
    status, headers, body, _ = run_asgi(app, "/sync", headers=[("X-Request-ID", "req-sync")])
    assert body == b"req-sync"
    seen = {r.headers.get("x-request-id") for r in fault_server.requests}
    paths = len(fault_server.requests)
    assert paths == 4  # async, task, background, sync
    assert seen == {"req-async", "req-sync"}


def test_starlette_unhandled_500_and_404_carry_the_id(server_instrumented: Any) -> None:
    app = starlette_app("http://127.0.0.1:9")
    status, headers, _, error = run_asgi(app, "/fail", headers=[("X-Request-ID", "e-500")])
    assert status == 500 and headers["x-request-id"] == ["e-500"]
    assert isinstance(error, ValueError)
    status, headers, _, _ = run_asgi(app, "/404", headers=[("X-Request-ID", "e-404")])
    assert status == 404 and headers["x-request-id"] == ["e-404"]
    status, headers, _, _ = run_asgi(app, "/no-such-route")
    assert status == 404 and is_uuid4(headers["x-request-id"][0])


def test_explicit_middleware_and_launcher_do_not_double_apply(server_instrumented: Any) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse(get_request_id() or ""))])
    app.add_middleware(RequestIdMiddleware)
    _, headers, body, _ = run_asgi(app, headers=[("X-Request-ID", "once")])
    assert headers["x-request-id"] == ["once"] and body == b"once"


def test_explicit_middleware_inside_server_error_middleware_still_answers_500() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def fail(request: Any) -> Any:
        raise ValueError("x")

    app = Starlette(routes=[Route("/", fail)])
    app.add_middleware(RequestIdMiddleware)
    status, headers, _, error = run_asgi(app, headers=[("X-Request-ID", "inner-500")])
    assert status == 500 and headers["x-request-id"] == ["inner-500"] and isinstance(error, ValueError)


def test_fastapi_zero_code(server_instrumented: Any, fault_server: Any, instrument: Any) -> None:
    instrument()
    app = FastAPI()

    def background() -> None:
        httpx.get(fault_server.url + "/ok?from=fastapi-bg")

    @app.get("/x")
    async def x(tasks: BackgroundTasks) -> dict:
        tasks.add_task(background)
        return {"id": get_request_id()}

    @app.get("/boom")
    async def boom() -> dict:
        raise KeyError("k")

    status, headers, body, _ = run_asgi(app, "/x", headers=[("X-Correlation-ID", "fa-1")])
    assert status == 200 and headers["x-request-id"] == ["fa-1"] and b"fa-1" in body
    assert fault_server.requests[-1].headers["x-request-id"] == "fa-1"
    status, headers, _, _ = run_asgi(app, "/boom", headers=[("X-Request-ID", "fa-2")])
    assert status == 500 and headers["x-request-id"] == ["fa-2"]


def test_server_span_gets_the_validated_id_never_the_raw_header(instrument: Any) -> None:
    inst = instrument()
    ensure_span_processor(inst.layer.tracer_provider)
    app = RequestIdMiddleware(OpenTelemetryMiddleware(plain_app, tracer_provider=inst.layer.tracer_provider))
    run_asgi(app, headers=[("X-Request-ID", "span-1")])
    run_asgi(app, headers=[("X-Request-ID", b"evil\r\nInjected: 1")])
    servers = [s for s in inst.spans() if s.kind.name == "SERVER"]
    assert len(servers) == 2
    values = [s.attributes["http.request.header.x-request-id"] for s in servers]
    assert values[0] == ("span-1",)
    assert is_uuid4(values[1][0]) and "evil" not in str(dict(servers[1].attributes))


def test_server_span_stamped_when_middleware_is_inside_the_otel_one(instrument: Any) -> None:
    inst = instrument()
    app = OpenTelemetryMiddleware(RequestIdMiddleware(plain_app), tracer_provider=inst.layer.tracer_provider)
    run_asgi(app, headers=[("X-Request-ID", "inside-1")])
    (server,) = [s for s in inst.spans() if s.kind.name == "SERVER"]
    assert server.attributes["http.request.header.x-request-id"] == ("inside-1",)


def test_upstream_raw_header_capture_is_overridden(instrument: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    inst = instrument()
    ensure_span_processor(inst.layer.tracer_provider)
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    otel = OpenTelemetryMiddleware(plain_app, tracer_provider=inst.layer.tracer_provider)
    run_asgi(RequestIdMiddleware(otel), headers=[("X-Request-ID", "bad id with spaces")])
    (server,) = [s for s in inst.spans() if s.kind.name == "SERVER"]
    (value,) = server.attributes["http.request.header.x-request-id"]
    assert is_uuid4(value)


def test_uvicorn_config_load_wraps_plain_asgi_apps(server_instrumented: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from opentelemetry import propagate

    from otel_integration._distro import default_propagator

    # No SDK here: the upstream middleware re-extracts the context, with the distro's propagators.
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", default_propagator(Settings()))

    config = uvicorn.Config(plain_app, log_config=None)
    config.load()
    assert isinstance(config.loaded_app, RequestIdMiddleware)
    assert isinstance(config.loaded_app.app, OpenTelemetryMiddleware)  # SERVER spans for plain ASGI apps
    _, headers, body, _ = run_asgi(config.loaded_app, headers=[("X-Request-ID", "uv-1")])
    assert headers["x-request-id"] == ["uv-1"] and body == b"uv-1"


def test_uvicorn_does_not_add_a_second_otel_middleware_for_starlette(server_instrumented: Any) -> None:
    import uvicorn

    config = uvicorn.Config(starlette_app("http://127.0.0.1:9"), log_config=None)
    config.load()
    assert config.interface == "asgi3"
    assert isinstance(config.loaded_app, RequestIdMiddleware)
    assert not isinstance(config.loaded_app.app, OpenTelemetryMiddleware)


def test_uninstrument_restores_the_frameworks() -> None:
    import flask
    import uvicorn.config
    from starlette.applications import Starlette

    originals = (Starlette.__call__, uvicorn.config.Config.load, flask.Flask.wsgi_app)
    instrumentor = ServerInstrumentor()
    instrumentor.instrument(settings=Settings())
    assert Starlette.__call__ is not originals[0]
    instrumentor.uninstrument()
    assert (Starlette.__call__, uvicorn.config.Config.load, flask.Flask.wsgi_app) == originals


def test_disabled_by_master_switch() -> None:
    from starlette.applications import Starlette

    original = Starlette.__call__
    instrumentor = ServerInstrumentor()
    instrumentor.instrument(settings=replace(Settings(), enabled=False))
    try:
        assert Starlette.__call__ is original
    finally:
        instrumentor.uninstrument()


# --- WSGI --------------------------------------------------------------------------------


def run_wsgi(app: Any, path: str = "/", headers: dict[str, str] | None = None, results: list[Any] | None = None):
    """Call a WSGI app directly: (status, {header: [values]}, body); the app's return value goes to `results`."""
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    captured: dict[str, Any] = {}

    def start_response(status: str, response_headers: list, exc_info: Any = None) -> Any:
        captured["status"] = int(status.split()[0])
        captured["headers"] = {}
        for k, v in response_headers:
            captured["headers"].setdefault(k.lower(), []).append(v)
        return lambda data: None

    from wsgiref.util import FileWrapper

    environ["wsgi.file_wrapper"] = FileWrapper  # as real servers offer it
    result = app(environ, start_response)
    if results is not None:
        results.append(result)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return captured["status"], captured["headers"], body


def wsgi_echo(environ: dict, start_response: Any) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body() -> Any:
        yield (get_request_id() or "").encode()  # streamed: the context is current here too

    return body()


def test_wsgi_middleware() -> None:
    app = RequestIdWSGIMiddleware(wsgi_echo)
    status, headers, body = run_wsgi(app, headers={"X-Request-ID": "w-1"})
    assert headers["x-request-id"] == ["w-1"] and body == b"w-1"
    _, headers, body = run_wsgi(app, headers={"X-Request-ID": "bad\u00e9"})
    assert is_uuid4(headers["x-request-id"][0]) and body.decode() == headers["x-request-id"][0]
    assert get_request_id() is None


def test_wsgi_file_wrapper_reaches_the_server_as_such(tmp_path: Any) -> None:
    """The issue's case: every WSGI result was wrapped in a generator, so sendfile was lost (PEP 3333)."""
    from wsgiref.util import FileWrapper

    path = tmp_path / "report.bin"
    path.write_bytes(b"0123456789" * 100)

    def app(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](path.open("rb"), 256)

    results: list[Any] = []
    status, headers, body = run_wsgi(RequestIdWSGIMiddleware(app), results=results)
    assert status == 200 and body == path.read_bytes() and headers["x-request-id"]
    assert isinstance(results[0], FileWrapper)  # not wrapped: the server can use sendfile


def test_wsgi_list_results_are_returned_as_they_are() -> None:
    body = [b"a", b"b"]

    def app(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [])
        return body

    results: list[Any] = []
    _, _, got = run_wsgi(RequestIdWSGIMiddleware(app), results=results)
    assert got == b"ab" and results[0] is body


def test_wsgi_unhandled_exception_answered_500_with_id(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: dict, start_response: Any) -> Any:
        raise RuntimeError("wsgi boom")

    status, headers, body = run_wsgi(RequestIdWSGIMiddleware(app), headers={"X-Request-ID": "w-500"})
    assert status == 500 and headers["x-request-id"] == ["w-500"]
    assert any("wsgi boom" in (r.exc_text or str(r.exc_info)) for r in caplog.records)


def test_flask_zero_code(server_instrumented: Any, fault_server: Any, instrument: Any) -> None:
    instrument()
    import flask

    app = flask.Flask("t")

    @app.get("/")
    def index() -> str:
        httpx.get(fault_server.url + "/ok?from=flask")
        return get_request_id() or ""

    @app.get("/own")
    def own() -> Any:
        return "x", 200, {"X-Request-ID": "flask-own"}

    status, headers, body = run_wsgi(app.wsgi_app, headers={"X-Request-ID": "fl-1"})
    assert status == 200 and headers["x-request-id"] == ["fl-1"] and body == b"fl-1"
    assert fault_server.requests[-1].headers["x-request-id"] == "fl-1"
    _, headers, _ = run_wsgi(app.wsgi_app, "/own", headers={"X-Request-ID": "fl-2"})
    assert headers["x-request-id"] == ["flask-own"]
    status, headers, _ = run_wsgi(app.wsgi_app, "/missing", headers={"X-Request-ID": "fl-3"})
    assert status == 404 and headers["x-request-id"] == ["fl-3"]


def test_threads_started_with_copied_context_carry_the_id(fault_server: Any, instrument: Any) -> None:
    instrument()
    import contextvars

    def app(environ: dict, start_response: Any) -> Any:
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(httpx.get, fault_server.url + "/ok?from=thread"))
        t.start()
        t.join()
        start_response("200 OK", [])
        return [b""]

    run_wsgi(RequestIdWSGIMiddleware(app), headers={"X-Request-ID": "th-1"})
    assert fault_server.requests[-1].headers["x-request-id"] == "th-1"


def test_patches_the_original_classes_even_after_the_framework_instrumentations(fault_server: Any) -> None:
    """The starlette instrumentation swaps `starlette.applications.Starlette` for a subclass."""
    import uvicorn
    from opentelemetry.instrumentation.starlette import StarletteInstrumentor

    starlette_instrumentor = StarletteInstrumentor()
    starlette_instrumentor.instrument()
    ours = ServerInstrumentor()
    ours.instrument(settings=Settings())
    try:
        app = FastAPI()
        config = uvicorn.Config(app, log_config=None)
        config.load()
        assert not isinstance(config.loaded_app.app, OpenTelemetryMiddleware)  # no second SERVER span
        _, headers, _, _ = run_asgi(app, "/missing", headers=[("X-Request-ID", "order-1")])
        assert headers["x-request-id"] == ["order-1"]
    finally:
        ours.uninstrument()
        starlette_instrumentor.uninstrument()


def test_health_statistics_and_auth_forwarding_only_when_configured():
    from dataclasses import replace

    from otel_integration._client.layer import ResilienceLayer

    plain = ResilienceLayer(Settings())
    assert plain.before_send_hooks == [] and not plain.keeps_stats

    configured = ResilienceLayer(replace(Settings(), health_path="/healthz", auth_forward_to=frozenset({"catalog"})))
    assert len(configured.before_send_hooks) == 1 and configured.keeps_stats  # auth forwarding, latency window


# --- the upstream ASGI middleware's INTERNAL spans ---------------------------------------------


def _internal_spans_of(inst: Any, app: Any) -> list[str]:
    run_asgi(app)
    return sorted(s.name for s in inst.spans() if s.kind.name == "INTERNAL")


def test_internal_asgi_spans_off_by_default_and_an_explicit_choice_is_kept(instrument: Any) -> None:
    inst = instrument()
    ours = ServerInstrumentor()
    ours.instrument(settings=Settings())
    try:
        provider = inst.layer.tracer_provider
        assert _internal_spans_of(inst, OpenTelemetryMiddleware(plain_app, tracer_provider=provider)) == []
        explicit = OpenTelemetryMiddleware(plain_app, tracer_provider=provider, exclude_spans=[])
        assert _internal_spans_of(inst, explicit) == ["GET / http send", "GET / http send"]
    finally:
        ours.uninstrument()
    assert not hasattr(OpenTelemetryMiddleware.__init__, "__wrapped__")  # restored


def test_internal_asgi_spans_kept_as_the_setting_says(instrument: Any) -> None:
    inst = instrument()
    ours = ServerInstrumentor()
    ours.instrument(settings=replace(Settings(), asgi_internal_spans=frozenset({"send"})))
    try:
        middleware = OpenTelemetryMiddleware(plain_app, tracer_provider=inst.layer.tracer_provider)
        assert (middleware.exclude_receive_span, middleware.exclude_send_span) == (True, False)
    finally:
        ours.uninstrument()
