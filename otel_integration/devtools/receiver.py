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

import argparse
import base64
import collections
import json
import signal
import socket
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "LogRecord",
    "MetricPoint",
    "OTLPReceiver",
    "RequestInfo",
    "Span",
    "main",
]

DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024  # 16 MiB; the collector's default is 20 MiB
_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Span:
    """One decoded span. Ids are lowercase hex; ``parent_span_id`` is "" for a root."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str  # "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER" or "UNSPECIFIED"
    start_ns: int
    end_ns: int
    status_code: str = "UNSET"  # "UNSET", "OK" or "ERROR"
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    scope_name: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __hash__(self) -> int:
        # The dict fields make the generated hash fail; ids identify a span anyway, and
        # equal spans have equal ids, so this stays consistent with __eq__.
        return hash((self.trace_id, self.span_id))

    @property
    def service_name(self) -> str:
        return str(self.resource.get("service.name", ""))

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass(frozen=True)
class MetricPoint:
    """One data point of one metric, flattened with its metric's name/unit/resource.

    ``kind`` is "sum", "gauge", "histogram", "exponential_histogram" or "summary".
    Sums and gauges carry ``value``; histograms carry ``count``/``sum``/
    ``bucket_counts``/``explicit_bounds`` (and ``min``/``max`` when sent).
    ``temporality`` is "CUMULATIVE", "DELTA" or "" (gauges): cumulative exports repeat
    the running total, so do not add up successive points of one series.
    """

    name: str
    unit: str
    kind: str
    attributes: dict[str, Any] = field(default_factory=dict)
    value: float | int | None = None
    count: int | None = None
    sum: float | None = None
    bucket_counts: tuple[int, ...] = ()
    explicit_bounds: tuple[float, ...] = ()
    min: float | None = None
    max: float | None = None
    is_monotonic: bool | None = None
    temporality: str = ""
    resource: dict[str, Any] = field(default_factory=dict)
    scope_name: str = ""
    description: str = ""
    start_ns: int = 0
    time_ns: int = 0

    @property
    def service_name(self) -> str:
        return str(self.resource.get("service.name", ""))


@dataclass(frozen=True)
class LogRecord:
    """One decoded log record; ids are lowercase hex or "" when not correlated."""

    body: str
    severity_text: str = ""
    severity_number: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    trace_id: str = ""
    span_id: str = ""
    resource: dict[str, Any] = field(default_factory=dict)
    scope_name: str = ""
    time_ns: int = 0

    @property
    def service_name(self) -> str:
        return str(self.resource.get("service.name", ""))


@dataclass(frozen=True)
class RequestInfo:
    """What one HTTP request to the receiver looked like and how it was answered."""

    method: str
    path: str
    status: int
    content_type: str
    content_encoding: str
    body_size: int  # bytes on the wire (before decompression); -1 when not read


# --------------------------------------------------------------------------- decoding


def decode_any_value(value: common_pb2.AnyValue) -> Any:
    """AnyValue -> str/bool/int/float/bytes, tuple for arrays, dict for kvlists, None."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(decode_any_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    return getattr(value, which)


def decode_attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: decode_any_value(kv.value) for kv in pairs}


def _enum_name(enum: Any, number: int, prefix: str) -> str:
    try:
        return str(enum.Name(number)).removeprefix(prefix)
    except ValueError:  # a number this proto version does not know
        return str(number)


def decode_spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    spans: list[Span] = []
    for rs in request.resource_spans:
        resource = decode_attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=_enum_name(trace_pb2.Span.SpanKind, s.kind, "SPAN_KIND_"),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        status_code=_enum_name(
                            trace_pb2.Status.StatusCode, s.status.code, "STATUS_CODE_"
                        ),
                        status_message=s.status.message,
                        attributes=decode_attributes(s.attributes),
                        resource=resource,
                        scope_name=ss.scope.name,
                        events=[(e.name, decode_attributes(e.attributes)) for e in s.events],
                    )
                )
    return spans


def decode_metrics(
    request: metrics_service_pb2.ExportMetricsServiceRequest,
) -> list[MetricPoint]:
    def temporality(number: int) -> str:
        return _enum_name(metrics_pb2.AggregationTemporality, number, "AGGREGATION_TEMPORALITY_")

    points: list[MetricPoint] = []
    for rm in request.resource_metrics:
        resource = decode_attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                common = dict(
                    name=m.name,
                    unit=m.unit,
                    description=m.description,
                    resource=resource,
                    scope_name=sm.scope.name,
                )
                data = m.WhichOneof("data")
                if data in ("sum", "gauge"):
                    body = getattr(m, data)
                    for p in body.data_points:
                        points.append(
                            MetricPoint(
                                kind=data,
                                attributes=decode_attributes(p.attributes),
                                value=getattr(p, p.WhichOneof("value") or "as_int"),
                                is_monotonic=body.is_monotonic if data == "sum" else None,
                                temporality=(
                                    temporality(body.aggregation_temporality)
                                    if data == "sum"
                                    else ""
                                ),
                                start_ns=p.start_time_unix_nano,
                                time_ns=p.time_unix_nano,
                                **common,
                            )
                        )
                elif data == "histogram":
                    for p in m.histogram.data_points:
                        points.append(
                            MetricPoint(
                                kind="histogram",
                                attributes=decode_attributes(p.attributes),
                                count=p.count,
                                sum=p.sum if p.HasField("sum") else None,
                                bucket_counts=tuple(p.bucket_counts),
                                explicit_bounds=tuple(p.explicit_bounds),
                                min=p.min if p.HasField("min") else None,
                                max=p.max if p.HasField("max") else None,
                                temporality=temporality(m.histogram.aggregation_temporality),
                                start_ns=p.start_time_unix_nano,
                                time_ns=p.time_unix_nano,
                                **common,
                            )
                        )
                elif data in ("exponential_histogram", "summary"):
                    # Kept coarse on purpose: count and sum are what the summaries need.
                    body = getattr(m, data)
                    for p in body.data_points:
                        points.append(
                            MetricPoint(
                                kind=data,
                                attributes=decode_attributes(p.attributes),
                                count=p.count,
                                sum=p.sum,
                                temporality=(
                                    temporality(body.aggregation_temporality)
                                    if data == "exponential_histogram"
                                    else "CUMULATIVE"
                                ),
                                start_ns=p.start_time_unix_nano,
                                time_ns=p.time_unix_nano,
                                **common,
                            )
                        )
    return points


def decode_logs(request: logs_service_pb2.ExportLogsServiceRequest) -> list[LogRecord]:
    records: list[LogRecord] = []
    for rl in request.resource_logs:
        resource = decode_attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                body = decode_any_value(r.body)
                records.append(
                    LogRecord(
                        body="" if body is None else str(body),
                        severity_text=r.severity_text,
                        severity_number=int(r.severity_number),
                        attributes=decode_attributes(r.attributes),
                        trace_id=r.trace_id.hex() if any(r.trace_id) else "",
                        span_id=r.span_id.hex() if any(r.span_id) else "",
                        resource=resource,
                        scope_name=sl.scope.name,
                        time_ns=r.time_unix_nano or r.observed_time_unix_nano,
                    )
                )
    return records


# OTLP/JSON differs from the protobuf JSON mapping in one way that matters here: ids are
# hex, not base64. Rewrite them so json_format can do the rest.
_ID_KEYS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                value = base64.b64encode(bytes.fromhex(value)).decode("ascii")
            out[key] = _hex_ids_to_base64(value)
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def _parse_json(body: bytes, message: Message) -> None:
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("an OTLP/JSON request must be a JSON object")
    json_format.ParseDict(_hex_ids_to_base64(document), message, ignore_unknown_fields=True)


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


# --------------------------------------------------------------------------- CLI


class _TraceBuffer:
    """Groups spans by trace and releases a trace once it has been quiet for ``quiet`` s."""

    def __init__(self, quiet: float = 1.0) -> None:
        self.quiet = quiet
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[float, list[Span]]] = {}

    def add(self, spans: list[Span]) -> None:
        now = time.monotonic()
        with self._lock:
            for span in spans:
                _, bucket = self._pending.get(span.trace_id, (now, []))
                bucket.append(span)
                self._pending[span.trace_id] = (now, bucket)

    def ready(self, *, flush_all: bool = False) -> list[list[Span]]:
        now = time.monotonic()
        with self._lock:
            done = [
                tid
                for tid, (last, _) in self._pending.items()
                if flush_all or now - last >= self.quiet
            ]
            traces = [self._pending.pop(tid)[1] for tid in done]
        traces.sort(key=lambda t: min(s.start_ns for s in t))
        return traces


def main(argv: list[str] | None = None) -> int:
    """``otel-integration receive``: listen and print each trace as it completes."""
    from otel_integration.devtools.traceview import render_trace, summarize_metrics

    parser = argparse.ArgumentParser(
        prog="otel-integration receive",
        description="Receive OTLP/HTTP and print every trace as a tree once it has been "
        "quiet for about a second.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318, help="0 picks a free port")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after SECONDS (default: until Ctrl-C)")
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    args = parser.parse_args(argv)

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    buffer = _TraceBuffer()
    receiver = OTLPReceiver(args.host, args.port, on_spans=buffer.add)
    try:
        receiver.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    # SIGTERM (e.g. from a supervisor) ends the loop as cleanly as Ctrl-C does.
    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)

    print(f"listening on {receiver.endpoint}  "
          f"(export with OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint})", flush=True)

    def emit(traces: list[list[Span]]) -> None:
        for trace in traces:
            print(render_trace(trace, width=args.width, color=color), flush=True)
            print(flush=True)

    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.1)
            emit(buffer.ready())
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
    emit(buffer.ready(flush_all=True))
    points = receiver.metrics()
    if points:
        print(summarize_metrics(points), flush=True)
    logs = receiver.logs()
    print(f"received {len(receiver.spans())} spans, {len(points)} metric points, "
          f"{len(logs)} log records", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
