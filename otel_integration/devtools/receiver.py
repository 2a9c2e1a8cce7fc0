"""A small, real OTLP/HTTP receiver: the peer for tests, the demo and ``otel-integration receive``.

It listens with the standard library's :class:`http.server.ThreadingHTTPServer` on a
background thread and decodes the official OTLP protobuf messages posted to
``/v1/traces``, ``/v1/metrics`` and ``/v1/logs`` into plain frozen dataclasses::

    from otel_integration.devtools.receiver import OTLPReceiver

    with OTLPReceiver() as rx:                     # port 0: an ephemeral port
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = rx.endpoint
        ...                                        # run instrumented code, flush providers
        assert rx.wait_for(lambda r: any(s.name == "GET" for s in r.spans()))
        (span,) = [s for s in rx.spans() if s.kind == "CLIENT"]
        assert span.attributes["http.response.status_code"] == 200

Encodings:

* ``Content-Type: application/x-protobuf`` (the default of every OTLP/HTTP exporter);
* ``Content-Type: application/json`` (OTLP/JSON: hex trace/span ids, integer enums);
* ``Content-Encoding: gzip`` or ``deflate`` for either of them.

Anything else gets 415, undecodable bodies 400, bodies over ``max_body_size`` (before
or after decompression) 413. Successful exports are answered with the empty
``Export*ServiceResponse`` in the request's encoding and 200.

This is a development tool: no TLS, no auth, everything kept in memory until
:meth:`OTLPReceiver.clear`. Bind it to loopback unless you mean otherwise.
"""

from __future__ import annotations

import collections
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otel_integration.devtools.otlp import (
    LogRecord,
    MetricPoint,
    RequestInfo,
    Span,
    _parse_json,
    decode_logs,
    decode_metrics,
    decode_spans,
)

__all__ = ["DEFAULT_MAX_BODY_SIZE", "LogRecord", "MetricPoint", "OTLPReceiver", "RequestInfo", "Span"]

DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024  # 16 MiB; the collector's default is 20 MiB
_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"



# --------------------------------------------------------------------------- HTTP layer


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress with a hard output bound, so a small gzip bomb cannot eat the memory."""
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS  # zlib-wrapped, as HTTP's "deflate" means
    else:
        raise _HTTPError(415, f"unsupported Content-Encoding: {encoding}")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _HTTPError(400, f"bad {encoding} body: {exc}") from None
    if len(out) > limit:
        raise _HTTPError(413, f"decompressed body exceeds {limit} bytes")
    if not inflater.eof:
        raise _HTTPError(400, f"truncated {encoding} body")
    return out


_SIGNALS: dict[str, tuple[type[Message], type[Message], str]] = {
    "/v1/traces": (
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        "traces",
    ),
    "/v1/metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        "metrics",
    ),
    "/v1/logs": (
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        "logs",
    ),
}


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so exporters can keep their connection alive across exports; it obliges
    # us to always send Content-Length, which _reply does.
    protocol_version = "HTTP/1.1"
    server_version = "otel-integration-receiver"
    timeout = 30  # idle keep-alive connections must not pin handler threads forever
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # stay quiet: the CLI prints traces, tests read the RequestInfo log

    def do_POST(self) -> None:  # noqa: N802
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0]
        ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        cenc = self.headers.get("Content-Encoding", "").strip().lower()
        size = -1
        as_json = ctype == _JSON
        reply_type = "text/plain"
        try:
            if path not in _SIGNALS:
                raise _HTTPError(404, f"unknown path {path}")
            request_type, response_type, signal_name = _SIGNALS[path]
            if ctype not in (_PROTOBUF, _JSON):
                raise _HTTPError(415, f"unsupported Content-Type: {ctype or '(none)'}")
            body = self._read_body(receiver.max_body_size)
            size = len(body)
            body = _inflate(body, cenc, receiver.max_body_size)
            message = request_type()
            try:
                if as_json:
                    _parse_json(body, message)
                else:
                    message.ParseFromString(body)
            except (DecodeError, ValueError, TypeError, RecursionError,
                    json_format.ParseError) as exc:
                raise _HTTPError(400, f"cannot decode {signal_name} request: {exc}") from None
            receiver._ingest(signal_name, message)
        except _HTTPError as exc:
            status, payload = exc.status, exc.message.encode("utf-8", "replace")
        except Exception as exc:  # a decoding bug must not kill the receiver for good
            status, payload = 500, f"internal error: {type(exc).__name__}".encode()
        else:
            response = response_type()
            status = 200
            if as_json:
                payload, reply_type = json_format.MessageToJson(response).encode(), _JSON
            else:
                payload, reply_type = response.SerializeToString(), _PROTOBUF
        if size < 0:
            # The body (if any) is still unread on the socket; on a kept-alive connection
            # it would be parsed as the next request. Hang up after this answer instead.
            self.close_connection = True
        # Record before replying: whoever saw the export succeed can also see the request.
        receiver._record(RequestInfo("POST", path, status, ctype, cenc, size))
        self._reply(status, payload, reply_type)

    def do_GET(self) -> None:  # noqa: N802
        status = 405 if self.path.split("?", 1)[0] in _SIGNALS else 404
        self._reply(status, b"POST OTLP data to /v1/traces, /v1/metrics or /v1/logs\n", "text/plain")

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            raise _HTTPError(411, "Content-Length required")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise _HTTPError(400, "bad Content-Length") from None
        if length > limit:
            # The body stays unread on the socket, so this connection cannot be reused.
            self.close_connection = True
            raise _HTTPError(413, f"body of {length} bytes exceeds {limit}")
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise _HTTPError(400, "body shorter than Content-Length")
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        try:
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # skip trailers
                    return b"".join(parts)
                total += size
                if total > limit:
                    self.close_connection = True
                    raise _HTTPError(413, f"chunked body exceeds {limit} bytes")
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        except ValueError:
            self.close_connection = True
            raise _HTTPError(400, "bad chunked encoding") from None

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must never block stop()
    receiver: "OTLPReceiver"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(connection)

    def close_connections(self) -> None:
        """Hang up on keep-alive clients, so a stopped receiver accepts nothing more."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Peers that hang up mid-request are routine; don't spray tracebacks on stderr.
        if not isinstance(sys.exc_info()[1], (OSError, TimeoutError)):
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


# --------------------------------------------------------------------------- receiver


class OTLPReceiver:
    """In-memory OTLP/HTTP receiver on a background thread.

    >>> rx = OTLPReceiver().start()           # doctest: +SKIP
    >>> rx.endpoint                           # doctest: +SKIP
    'http://127.0.0.1:43871'
    >>> rx.stop()                             # doctest: +SKIP

    ``on_spans`` (if set) is called with every decoded batch of spans, on the HTTP
    handler thread, after the batch is stored; exceptions it raises are swallowed so a
    buggy viewer cannot make exports fail.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        on_spans: Callable[[list[Span]], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.max_body_size = max_body_size
        self.on_spans = on_spans
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self._metrics: list[MetricPoint] = []
        self._logs: list[LogRecord] = []
        self._requests: collections.deque[RequestInfo] = collections.deque(maxlen=10_000)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------------

    def start(self) -> "OTLPReceiver":
        if self._server is not None:
            return self
        server_cls = _Server6 if ":" in self.host else _Server
        server = server_cls((self.host, self.port), _Handler)
        server.receiver = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"otlp-receiver:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> "OTLPReceiver":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (signal paths are appended)."""
        if self._server is None:
            raise RuntimeError("OTLPReceiver is not started")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # snapshots -----------------------------------------------------------------------

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def metrics(self) -> list[MetricPoint]:
        with self._lock:
            return list(self._metrics)

    def logs(self) -> list[LogRecord]:
        with self._lock:
            return list(self._logs)

    def requests(self) -> list[RequestInfo]:
        """Every HTTP request received so far (newest last, the last 10 000 kept)."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._metrics.clear()
            self._logs.clear()
            self._requests.clear()

    def wait_for(
        self, predicate: Callable[["OTLPReceiver"], bool], timeout: float = 30.0
    ) -> bool:
        """Poll ``predicate(self)`` until it is true (-> True) or ``timeout`` s pass (-> False).

        The default timeout only bounds a hang: on a busy machine exports arrive late, not never.
        """
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # ingestion (handler threads) -------------------------------------------------------

    def _ingest(self, signal_name: str, message: Any) -> None:
        if signal_name == "traces":
            spans = decode_spans(message)
            with self._lock:
                self._spans.extend(spans)
            callback = self.on_spans
            if callback is not None and spans:
                try:
                    callback(spans)
                except Exception:  # noqa: BLE001 - see class docstring
                    pass
        elif signal_name == "metrics":
            points = decode_metrics(message)
            with self._lock:
                self._metrics.extend(points)
        else:
            records = decode_logs(message)
            with self._lock:
                self._logs.extend(records)

    def _record(self, info: RequestInfo) -> None:
        with self._lock:
            self._requests.append(info)
