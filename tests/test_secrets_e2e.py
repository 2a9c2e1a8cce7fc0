"""No secret from a URL or an Authorization header reaches a span, a log record or stderr:
a Starlette app (uvicorn) and a Flask app (the Flask development server) under
``opentelemetry-instrument``, exporting to a real OTLP receiver, with the real
upstream instrumentations setting the attributes.

Every secret value is unique, so each check is "this string is nowhere": not in any
decoded span (name, attributes, events, status) or log record, not in the service's
output. Each test also checks the redacted form is there, so it cannot pass by
recording nothing.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from otel_integration.devtools.receiver import OTLPReceiver
from tests.launched import LaunchedService, free_port, raw_request, service_env, uvicorn_argv
from tests.peers import FaultServer, wait_until

pytestmark = pytest.mark.slow

# The spellings that leaked before, the built-in names, and one name of OTEL_INTEGRATION_REDACT_QUERY_PARAMS.
SPELLINGS = [
    "token", "auth_token", "accessToken", "api-key", "private_token", "%74oken", "Access-Token",
    "X-Amz-Signature", "client_secret", "otp",
]


def secret() -> str:
    return "S" + uuid.uuid4().hex[:16]


@dataclass
class Service:
    name: str
    launched: LaunchedService
    receiver: OTLPReceiver
    peer: FaultServer

    def get(self, target: str, *header_lines: str) -> int:
        lines = "".join(f"{line}\r\n" for line in header_lines)
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}Connection: close\r\n\r\n"
        return raw_request(self.launched.port, request.encode("latin-1"))[0]

    def everything(self) -> str:
        """All the service let out: decoded spans and log records, and its stdout/stderr."""
        return "\n".join([repr(self.receiver.spans()), repr(self.receiver.logs()), self.launched.log()])

    def server_span(self, path_prefix: str) -> object:
        spans = [s for s in self.receiver.spans() if s.kind == "SERVER"
                 and str(s.attributes.get("url.path", "")).startswith(path_prefix)]
        return spans[0] if spans else None


@pytest.fixture(scope="module", params=["starlette", "flask"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logdir = tmp_path_factory.mktemp(f"secrets-{request.param}")
    port = free_port()
    if request.param == "starlette":
        argv = uvicorn_argv("tests.apps.relay:app", port)  # with uvicorn's access log
    else:
        argv = [sys.executable, "-m", "flask", "--app", "tests.apps.relay_flask", "run",
                "--host", "127.0.0.1", "--port", str(port)]
    with OTLPReceiver() as receiver, FaultServer() as peer:
        env = service_env(
            receiver.endpoint, f"secrets-{request.param}", DOWNSTREAM_URL=peer.url,
            OTEL_INTEGRATION_REDACT_QUERY_PARAMS="otp",
            OTEL_INTEGRATION_AUTH_FORWARD_TO=f"127.0.0.1:{peer.port}",
        )
        launched = LaunchedService(request.param, argv, port, env, logdir)
        try:
            launched.wait_ready(time.monotonic() + 60)
            yield Service(request.param, launched, receiver, peer)
        finally:
            launched.stop()


def test_query_and_fragment_secrets_are_redacted_on_server_and_client_spans_and_in_every_log(
    service: Service,
) -> None:
    values = {name: secret() for name in SPELLINGS}
    query = "&".join(f"{name}={value}" for name, value in values.items()) + "&page=2"
    fragment_secret = secret()
    status = service.get(f"/relay/ok/q?{query}", f"X-Fragment: access_token={fragment_secret}&state=xyz")
    assert status == 200

    def exported() -> bool:
        client = [s for s in service.receiver.spans() if s.kind == "CLIENT" and "/ok/q" in str(s.attributes.get("url.full"))]
        return bool(client) and service.server_span("/relay/ok/q") is not None

    wait_until(exported, what="the server and client spans")
    wait_until(lambda: "HTTP Request: GET" in service.launched.log(), what="httpx's INFO line")
    everything = service.everything()
    leaked = [name for name, value in values.items() if value in everything]
    assert not leaked, leaked
    assert fragment_secret not in everything
    server = service.server_span("/relay/ok/q")
    assert "token=REDACTED" in server.attributes["url.query"] and "page=2" in server.attributes["url.query"]  # type: ignore[attr-defined]
    (client,) = [s for s in service.receiver.spans() if s.kind == "CLIENT" and "/ok/q" in str(s.attributes.get("url.full"))]
    assert client.attributes["url.full"].endswith("#access_token=REDACTED&state=xyz")
    assert "otp=REDACTED" in client.attributes["url.full"]


def test_a_raise_for_status_message_is_redacted_on_the_span_and_in_the_logged_traceback(service: Service) -> None:
    value = secret()
    assert service.get(f"/raise/status/404?token={value}") == 500

    def exception_recorded() -> bool:
        span = service.server_span("/raise/status/404")
        return span is not None and any(name == "exception" for name, _ in span.events)  # type: ignore[attr-defined]

    wait_until(exception_recorded, what="the SERVER span with its exception event")
    wait_until(lambda: "HTTPStatusError" in service.launched.log(), what="the traceback on stderr")
    if service.name == "flask":  # Flask logs it through app.logger, which reaches the OTLP handler
        # (uvicorn's own loggers do not propagate to the root logger, so nothing of it is exported).
        wait_until(lambda: any("token=REDACTED" in str(r.attributes.get("exception.message"))
                               for r in service.receiver.logs()), what="the exception's log record over OTLP")
    assert value not in service.everything()
    span = service.server_span("/raise/status/404")
    (message,) = [attributes["exception.message"] for name, attributes in span.events if name == "exception"]  # type: ignore[attr-defined]
    assert "token=REDACTED" in message
    assert "token=REDACTED" in service.launched.log()


def test_a_repeated_authorization_header_is_not_forwarded(service: Service) -> None:
    """Werkzeug joins the two fields with "," (so did the Flask path's forwarding); ASGI keeps both."""
    one, two = secret(), secret()
    assert service.get("/relay/ok/auth-once", f"Authorization: Bearer {one}") == 200
    assert service.get("/relay/ok/auth-twice", f"Authorization: Bearer {one}", f"Authorization: Bearer {two}") == 200
    (once,) = service.peer.requests_to("/ok/auth-once")
    (twice,) = service.peer.requests_to("/ok/auth-twice")
    assert once.headers.get("authorization") == f"Bearer {one}"  # forwarding is on: a single header goes on
    assert "authorization" not in twice.headers
    # ...and neither value is in the telemetry.
    wait_until(lambda: service.server_span("/relay/ok/auth-twice") is not None, what="the SERVER span")
    assert one not in service.everything() and two not in service.everything()
