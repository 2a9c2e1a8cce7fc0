"""No-network stand-ins used by the benchmark processes.

* httpcore connection pools that sit *under* `httpx.HTTPTransport.handle_request`,
  so everything above them runs for real: httpx, the upstream instrumentation
  (CLIENT span, duration histogram) and the otel_integration layer;
* in-process ASGI and WSGI drivers: one incoming request handed straight to
  the app, with everything the launcher wrapped around it (the upstream
  OpenTelemetry middleware, our server hooks) running for real.

Imports only the standard library at module level: the bare configuration
must not load anything it would not load anyway.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any


def _response(status: int) -> Any:
    import httpcore

    return httpcore.Response(status, headers=[(b"Content-Length", b"2")], content=b"ok")


class _FakePool:
    """Stands in for httpcore's connection pool: answers 200 without any I/O."""

    def __init__(self) -> None:
        self.requests = 0
        self.last: Any = None  # the last httpcore.Request, for the --check facts

    def handle_request(self, request: Any) -> Any:
        self.requests += 1
        self.last = request
        return _response(200)

    def close(self) -> None:
        pass

    def __enter__(self) -> _FakePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class FlakyPool(_FakePool):
    """503 and 200 in turn: with one retry, every call is a 503 then a 200."""

    def handle_request(self, request: Any) -> Any:
        self.requests += 1
        self.last = request
        return _response(503 if self.requests % 2 else 200)


class UnavailablePool(_FakePool):
    """Always 503 (what the official distro returns after its single attempt)."""

    def handle_request(self, request: Any) -> Any:
        self.requests += 1
        self.last = request
        return _response(503)


class RefusingPool(_FakePool):
    """Every connection refused, as httpcore reports it (httpx maps it to ConnectError)."""

    def handle_request(self, request: Any) -> Any:
        import httpcore

        self.requests += 1
        self.last = request
        raise httpcore.ConnectError("[Errno 111] Connection refused")


def client_with(pool: _FakePool) -> Any:
    """An `httpx.Client` whose default transport talks to ``pool``."""
    import httpx

    transport = httpx.HTTPTransport()
    transport._pool = pool  # type: ignore[assignment]
    return httpx.Client(transport=transport)


# --- incoming requests ------------------------------------------------------------------------

# One small GET, as a reverse proxy would forward it: no trace context and no
# X-Request-ID, so every configuration takes its "new request" path.
_HEADERS = ((b"host", b"svc.bench.invalid"), (b"user-agent", b"bench/1.0"), (b"accept", b"application/json"))


class Response:
    """What the app answered to the last request."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""


def asgi_driver(app: Callable[..., Awaitable[None]]) -> tuple[Callable[[], Awaitable[None]], Response]:
    """``one()`` serves one GET / through ``app`` in the running event loop."""
    last = Response()
    request_message = {"type": "http.request", "body": b"", "more_body": False}
    disconnect = {"type": "http.disconnect"}

    async def one() -> None:
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if received:
                return disconnect
            received = True
            return request_message

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                last.status = message["status"]
                last.headers = list(message.get("headers") or ())
                last.body = b""
            elif message["type"] == "http.response.body":
                last.body += message.get("body", b"")

        # A fresh scope each time: middlewares may rewrite it.
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": "",
            "headers": list(_HEADERS),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)

    return one, last


def wsgi_driver(app: Callable[..., Iterable[bytes]]) -> tuple[Callable[[], None], Response]:
    """``one()`` serves one GET / through ``app``, consuming and closing the body as a server does."""
    last = Response()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        last.status = int(status.split(" ", 1)[0])
        last.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return lambda data: None

    def one() -> None:
        environ = {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "",
            "PATH_INFO": "/",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "50000",
            **{"HTTP_" + k.decode().upper().replace("-", "_"): v.decode() for k, v in _HEADERS},
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        result = app(environ, start_response)
        try:
            last.body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    return one, last
