"""Auth forwarding: allowlisted downstreams only, never recorded anywhere."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

import httpx
import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry import propagate

from otel_integration import _auth as auth
from otel_integration._distro import default_propagator
from otel_integration import RequestIdMiddleware, ServerInstrumentor
from otel_integration._settings import Settings
from tests.peers import FaultServer
from tests.test_server import run_asgi

TOKEN = "Bearer s3cr3t-token-value"


@pytest.fixture
def second_server() -> Any:
    with FaultServer() as server:
        yield server


def address(server: FaultServer) -> str:
    return server.url.removeprefix("http://")


def settings_for(extract: FaultServer, **overrides: Any) -> Settings:
    return replace(Settings(), services={"extract": address(extract)}, **overrides)


def app_calling(*urls: str, own_auth: str | None = None) -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        async with httpx.AsyncClient() as client:
            for url in urls:
                headers = {"Authorization": own_auth} if own_auth else {}
                await client.get(url, headers=headers)
        with httpx.Client() as client:  # sync clients too
            for url in urls:
                client.get(url + "?sync=1")
        logging.getLogger("test.auth").warning("handled request")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def instrumented(instrument: Any, settings: Settings) -> Any:
    # The client instrumentor wires forwarding from the settings: nothing else to attach.
    return instrument(services=settings.services, auth_forward_to=settings.auth_forward_to)


def test_forwarded_only_to_allowlisted_downstreams(instrument: Any, fault_server: FaultServer, second_server: FaultServer) -> None:
    """Wired by the client instrumentor alone (the issue's case: it was the server instrumentor's job)."""
    settings = settings_for(fault_server, auth_forward_to=frozenset({"extract"}))
    instrumented(instrument, settings)
    assert not ServerInstrumentor().is_instrumented_by_opentelemetry
    app = RequestIdMiddleware(app_calling(fault_server.url + "/ok", second_server.url + "/ok"), settings)
    run_asgi(app, headers=[("Authorization", TOKEN)])
    assert not ServerInstrumentor().is_instrumented_by_opentelemetry  # still off: nothing turned it on meanwhile
    assert [r.headers.get("authorization") for r in fault_server.requests] == [TOKEN, TOKEN]
    assert second_server.requests and all("authorization" not in r.headers for r in second_server.requests)
    # not smuggled in any other header either (baggage, traceparent, ...)
    assert all(TOKEN not in str(r.headers) for r in second_server.requests)


def test_forwarding_and_probes_together_with_the_server_instrumentor_off(
    instrument: Any, fault_server: FaultServer, second_server: FaultServer
) -> None:
    """Both client features at once, the server instrumentor never instrumented: a healthy probe lets the
    forwarded call through, a failing one stops calls before they are sent (sync and async)."""
    from otel_integration.errors import DownstreamUnhealthyError
    from tests.peers import wait_until

    with FaultServer() as probe_target:
        inst = instrument(
            services={"extract": address(fault_server), "load": address(second_server)},
            auth_forward_to=frozenset({"extract", "load"}),
            health_probes={"extract": probe_target.url + "/ok", "load": probe_target.url + "/status/503"},
        )
        assert not ServerInstrumentor().is_instrumented_by_opentelemetry
        probes = inst.layer.downstreams.probes
        wait_until(lambda: probes["extract"].healthy is True and probes["load"].healthy is False, what="the probes")
        refused: list[str] = []

        async def app(scope: dict, receive: Any, send: Any) -> None:
            async with httpx.AsyncClient() as client:
                await client.get(fault_server.url + "/ok")
                try:
                    await client.get(second_server.url + "/ok")
                except DownstreamUnhealthyError:
                    refused.append("async")
            with httpx.Client() as client:
                client.get(fault_server.url + "/ok?sync=1")
                try:
                    client.get(second_server.url + "/ok?sync=1")
                except DownstreamUnhealthyError:
                    refused.append("sync")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        settings = replace(Settings(), services={"extract": address(fault_server), "load": address(second_server)},
                           auth_forward_to=frozenset({"extract", "load"}))
        run_asgi(RequestIdMiddleware(app, settings), headers=[("Authorization", TOKEN)])
        assert not ServerInstrumentor().is_instrumented_by_opentelemetry
    assert [r.headers.get("authorization") for r in fault_server.requests] == [TOKEN, TOKEN]
    assert refused == ["async", "sync"] and second_server.requests == []
    assert {r.path for r in probe_target.requests} == {"/ok", "/status/503"}  # both probes ran


def test_allowlist_by_host_and_port(instrument: Any, fault_server: FaultServer, second_server: FaultServer) -> None:
    settings = replace(Settings(), auth_forward_to=frozenset({address(second_server)}))
    instrumented(instrument, settings)
    app = RequestIdMiddleware(app_calling(fault_server.url + "/ok", second_server.url + "/ok"), settings)
    run_asgi(app, headers=[("Authorization", TOKEN)])
    assert all("authorization" not in r.headers for r in fault_server.requests)
    assert [r.headers.get("authorization") for r in second_server.requests] == [TOKEN, TOKEN]


def test_off_by_default(instrument: Any, fault_server: FaultServer) -> None:
    settings = settings_for(fault_server)
    assert settings.auth_forward_to == frozenset()
    instrumented(instrument, settings)
    run_asgi(RequestIdMiddleware(app_calling(fault_server.url + "/ok"), settings), headers=[("Authorization", TOKEN)])
    assert all("authorization" not in r.headers for r in fault_server.requests)


def test_outgoing_request_keeps_its_own_authorization(instrument: Any, fault_server: FaultServer) -> None:
    settings = settings_for(fault_server, auth_forward_to=frozenset({"extract"}))
    instrumented(instrument, settings)
    app = RequestIdMiddleware(app_calling(fault_server.url + "/ok", own_auth="Bearer own"), settings)
    run_asgi(app, headers=[("Authorization", TOKEN)])
    assert fault_server.requests[0].headers["authorization"] == "Bearer own"


def test_no_forwarding_outside_a_request(instrument: Any, fault_server: FaultServer) -> None:
    settings = settings_for(fault_server, auth_forward_to=frozenset({"extract"}))
    instrumented(instrument, settings)
    httpx.get(fault_server.url + "/ok")
    assert "authorization" not in fault_server.requests[0].headers


def test_bad_or_ambiguous_authorization_is_not_forwarded(instrument: Any, fault_server: FaultServer) -> None:
    settings = settings_for(fault_server, auth_forward_to=frozenset({"extract"}))
    instrumented(instrument, settings)
    app = RequestIdMiddleware(app_calling(fault_server.url + "/ok"), settings)
    run_asgi(app, headers=[("Authorization", "a"), ("Authorization", "b")])
    run_asgi(app, headers=[("Authorization", b"x\r\ny")])
    assert all("authorization" not in r.headers for r in fault_server.requests)


def test_never_in_spans_metrics_logs_or_propagation(
    instrument: Any, fault_server: FaultServer, second_server: FaultServer, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Even when told to capture every header, the upstream instrumentation redacts it.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
    monkeypatch.setenv(auth.SANITIZE_FIELDS, "")
    auth.sanitize_sensitive_headers(os.environ)
    assert "authorization" in os.environ[auth.SANITIZE_FIELDS].split(",")
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", default_propagator(Settings()))
    settings = settings_for(fault_server, auth_forward_to=frozenset({"extract"}))
    inst = instrumented(instrument, settings)
    caplog.set_level(logging.DEBUG)
    app = RequestIdMiddleware(app_calling(fault_server.url + "/ok", second_server.url + "/ok"), settings)
    run_asgi(app, headers=[("Authorization", TOKEN), ("X-Request-ID", "auth-1")])
    assert fault_server.requests[0].headers["authorization"] == TOKEN  # it was forwarded...
    secret = "s3cr3t"
    spans = inst.spans()
    assert spans
    captured = [s.attributes.get("http.request.header.authorization") for s in spans if s.kind.name == "CLIENT"]
    assert ("[REDACTED]",) in captured  # the upstream saw it and redacted it
    for span in spans:  # ...but no span holds it
        assert secret not in repr(dict(span.attributes or {})) + repr(span.events) + span.name
    data = inst.metric_reader.get_metrics_data()
    assert secret not in repr(data.to_json() if data else "")
    assert caplog.records and all(secret not in r.getMessage() and secret not in repr(vars(r)) for r in caplog.records)
    # not in baggage, not injected by any propagator
    ctx = auth.set_incoming_authorization(TOKEN)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    assert secret not in repr(carrier) and baggage.get_all(ctx) == {}
    assert auth.get_incoming_authorization() is None and otel_context.get_value(auth.AUTHORIZATION_KEY) is None


def test_sanitize_fields_appends_to_user_value() -> None:
    environ = {auth.SANITIZE_FIELDS: ".*session.*"}
    auth.sanitize_sensitive_headers(environ)
    fields = environ[auth.SANITIZE_FIELDS].split(",")
    assert fields[0] == ".*session.*" and "authorization" in fields
    auth.sanitize_sensitive_headers(environ)
    assert environ[auth.SANITIZE_FIELDS].split(",") == fields
