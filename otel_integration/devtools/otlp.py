"""OTLP messages decoded into plain frozen dataclasses: spans, metric points, log records.

The official protobuf messages (``opentelemetry-proto``) in, `Span`,
`MetricPoint` and `LogRecord` out; OTLP/JSON is accepted too (hex IDs,
integer enums). The receiver (`receiver.py`) and the trace view
(`traceview.py`) work on these.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["LogRecord", "MetricPoint", "RequestInfo", "Span", "decode_logs", "decode_metrics", "decode_spans"]


class _FromAService:
    """What a decoded item says about its origin: the ``service.name`` of its resource."""

    resource: dict[str, Any]

    @property
    def service_name(self) -> str:
        return str(self.resource.get("service.name", ""))


@dataclass(frozen=True)
class Span(_FromAService):
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
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass(frozen=True)
class MetricPoint(_FromAService):
    """One data point of one metric, flattened with its metric's name/unit/resource.

    ``kind`` is "sum", "gauge", "histogram", "exponential_histogram" or "summary".
    Sums and gauges carry ``value``; histograms carry ``count``/``sum``/
    ``bucket_counts``/``explicit_bounds`` (and ``min``/``max`` when sent).
    ``temporality`` is "CUMULATIVE", "DELTA" or "" (gauges): cumulative exports repeat
    the running total, so do not add up successive points of one series.
    Histograms also carry their ``exemplars``.
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
    exemplars: tuple[Exemplar, ...] = ()


@dataclass(frozen=True)
class Exemplar:
    """One exemplar of a histogram point: a measurement with the trace it was made in (hex ids, "" when none)."""

    value: float
    trace_id: str = ""
    span_id: str = ""
    time_ns: int = 0


@dataclass(frozen=True)
class LogRecord(_FromAService):
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
                                exemplars=tuple(
                                    Exemplar(
                                        value=getattr(e, e.WhichOneof("value") or "as_double"),
                                        trace_id=e.trace_id.hex() if any(e.trace_id) else "",
                                        span_id=e.span_id.hex() if any(e.span_id) else "",
                                        time_ns=e.time_unix_nano,
                                    )
                                    for e in p.exemplars
                                ),
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
