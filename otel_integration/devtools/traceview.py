"""Terminal views of received telemetry: a trace waterfall and a metrics table.

::

    from otel_integration.devtools.receiver import OTLPReceiver
    from otel_integration.devtools.traceview import render_traces, summarize_metrics

    with OTLPReceiver() as rx:
        ...
        print(render_traces(rx.spans()))
        print(summarize_metrics(rx.metrics()))

A trace renders as one line per span, children indented under their parent and
ordered by start time; spans whose parent never arrived are shown at root level::

    trace af8c77773b8a24a440b0c43489a00bfc  4 spans  32.2 ms  2 ERROR
    demo: GET /checkout SERVER   |████████████████████|   32.2 ms
    ├─ demo: GET CLIENT          |███████             |   10.4 ms ERROR HTTP 503 error.type=503 req=abc-123
    ├─ demo: GET CLIENT          |      ███████       |   10.4 ms ERROR HTTP 503 retry #1 error.type=503 req=abc-123
    └─ demo: GET CLIENT          |             ███████|   10.3 ms HTTP 200 retry #2 req=abc-123

Every value shown comes from the network, so all of it goes through :func:`clean`:
control/format characters (ANSI escapes, bidi overrides, newlines) are dropped and long
values are truncated.
"""

from __future__ import annotations

import math
import unicodedata
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:  # only for annotations: keeps `python -m otel_integration.receiver` single-copy
    from otel_integration.devtools.receiver import MetricPoint, Span

__all__ = ["clean", "render_trace", "render_traces", "summarize_metrics"]

_RED = "\x1b[31m"
_GREEN = "\x1b[32m"
_YELLOW = "\x1b[33m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"

RESILIENCE_METRICS = (
    "http.client.retries",
    "http.client.retry_budget.exhausted",
    "http.client.circuit_breaker.state",
    "http.client.circuit_breaker.transitions",
    "http.client.circuit_breaker.rejections",
    "http.client.request.duration",
)


def clean(value: Any, limit: int = 60) -> str:
    """Printable, single-line, at most ``limit`` characters (an ellipsis marks a cut).

    >>> clean("ok\\x1b[31m\\nred")
    'ok[31mred'
    """
    if isinstance(value, (tuple, list)):
        text = ",".join(clean(v, limit) for v in value)
    elif isinstance(value, bytes):
        text = value.hex()
    else:
        text = str(value)
    # Category C* = control, format (bidi overrides, zero-width), surrogates, unassigned.
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("C"))
    if len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return text


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color and text else text


# --------------------------------------------------------------------------- traces


def _tree(spans: Sequence["Span"]) -> list[tuple["Span", str]]:
    """Depth-first (span, prefix) pairs; prefix holds the tree connectors."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[int]] = defaultdict(list)
    roots: list[int] = []
    for i, s in enumerate(spans):
        if s.parent_span_id and s.parent_span_id in ids and s.parent_span_id != s.span_id:
            children[s.parent_span_id].append(i)
        else:
            roots.append(i)  # a true root, or an orphan whose parent never arrived

    def by_start(i: int) -> tuple[int, str]:
        return (spans[i].start_ns, spans[i].span_id)

    out: list[tuple[Span, str]] = []
    seen: set[int] = set()
    seen_ids: set[str] = set()

    def walk(i: int, prefix: str, connector: str) -> None:
        seen.add(i)
        out.append((spans[i], prefix + connector))
        span_id = spans[i].span_id
        if span_id in seen_ids:  # duplicate span ids: list the span, but its children once
            return
        seen_ids.add(span_id)
        kids = sorted((k for k in children.get(span_id, ()) if k not in seen), key=by_start)
        extension = prefix + ("" if not connector else ("   " if connector == "└─ " else "│  "))
        for n, k in enumerate(kids):
            walk(k, extension, "└─ " if n == len(kids) - 1 else "├─ ")

    for r in sorted(roots, key=by_start):
        walk(r, "", "")
    # Parent cycles (only from broken or hostile senders) are unreachable from any root;
    # still show those spans rather than silently dropping them.
    for i in sorted(set(range(len(spans))) - seen, key=by_start):
        if i not in seen:
            walk(i, "", "")
    return out


def _annotations(span: "Span", color: bool) -> list[str]:
    attrs = span.attributes
    notes: list[str] = []
    status = attrs.get("http.response.status_code", attrs.get("http.status_code"))
    if status is not None:
        text = f"HTTP {clean(status, 8)}"
        is_error = isinstance(status, int) and status >= 500
        notes.append(_paint(text, _RED if is_error else _DIM, color))
    resend = attrs.get("http.request.resend_count")
    if resend:
        notes.append(_paint(f"retry #{clean(resend, 8)}", _YELLOW, color))
    if "error.type" in attrs:
        notes.append(_paint(f"error.type={clean(attrs['error.type'], 40)}", _RED, color))
    request_id = attrs.get("http.request.header.x-request-id")
    if request_id is None:
        request_id = attrs.get("http.response.header.x-request-id")
    if request_id not in (None, "", ()):
        notes.append(f"req={clean(request_id, 40)}")
    return notes


def _bar(span: "Span", t0: int, total: int, width: int) -> str:
    if width <= 0:
        return ""
    if total <= 0:
        return "█" * width
    start = max(0, min(width - 1, math.floor((span.start_ns - t0) / total * width)))
    end = math.ceil((max(span.end_ns, span.start_ns) - t0) / total * width)
    end = max(start + 1, min(width, end))  # even a 0 ms span gets one visible cell
    return " " * start + "█" * (end - start) + " " * (width - end)


def render_trace(spans: list["Span"], *, width: int = 100, color: bool = False) -> str:
    """One trace as a tree with a waterfall bar per span; a header line first.

    ``width`` bounds the tree/label and bar columns; duration, status and the
    annotations (``HTTP 503``, ``retry #1``, ``error.type=...``, ``req=<x-request-id>``)
    follow on the same line.
    """
    if not spans:
        return "(no spans)"
    t0 = min(s.start_ns for s in spans)
    t1 = max(max(s.end_ns, s.start_ns) for s in spans)
    total = t1 - t0
    trace_ids = sorted({clean(s.trace_id, 32) for s in spans})
    errors = sum(1 for s in spans if s.status_code == "ERROR")
    plural = "s" if len(spans) != 1 else ""
    header = _paint(f"trace {', '.join(trace_ids)}", _BOLD, color)
    header += f"  {len(spans)} span{plural}  {total / 1e6:.1f} ms"
    if errors:
        header += "  " + _paint(f"{errors} ERROR", _RED + _BOLD, color)
    lines = [header]

    # Budget: label | bar | " 12345678.9 ms ERROR" must fit in width; annotations may not.
    label_width = max(20, int(width * 0.45))
    bar_width = max(10, width - label_width - 3 - 14 - 6)
    span_ids = {s.span_id for s in spans}
    for span, prefix in _tree(spans):
        service = clean(span.service_name or "?", 24)
        label = f"{prefix}{service}: {clean(span.name, 60)} {clean(span.kind, 12)}"
        if len(label) > label_width:
            label = label[: label_width - 1] + "…"
        is_error = span.status_code == "ERROR"
        bar = _paint(_bar(span, t0, total, bar_width), _RED if is_error else _GREEN, color)
        fields = [f"{label:<{label_width}} |{bar}|", f"{span.duration_ns / 1e6:10.1f} ms"]
        if is_error:
            fields.append(_paint("ERROR", _RED + _BOLD, color))
            if span.status_message:
                fields.append(_paint(f"({clean(span.status_message, 60)})", _RED, color))
        elif span.status_code == "OK":
            fields.append("OK")
        fields.extend(_annotations(span, color))
        if span.parent_span_id and span.parent_span_id not in span_ids:
            fields.append(_paint(f"(parent {clean(span.parent_span_id, 16)} not received)",
                                 _DIM, color))
        lines.append(" ".join(fields).rstrip())
    return "\n".join(lines)


def render_traces(spans: Iterable["Span"], *, width: int = 100, color: bool = False) -> str:
    """Every trace in ``spans``, oldest first, separated by blank lines."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        by_trace[s.trace_id].append(s)
    ordered = sorted(by_trace.values(), key=lambda t: min(s.start_ns for s in t))
    return "\n\n".join(render_trace(t, width=width, color=color) for t in ordered)


# --------------------------------------------------------------------------- metrics


def _target(attributes: dict[str, Any]) -> str:
    address = attributes.get("server.address")
    if address is not None:
        port = attributes.get("server.port")
        return clean(address, 40) + (f":{clean(port, 6)}" if port is not None else "")
    peer = attributes.get("peer.service")
    return clean(peer, 40) if peer is not None else "-"


def _series_key(p: "MetricPoint") -> tuple[Any, ...]:
    attrs = tuple(sorted((k, repr(v)) for k, v in p.attributes.items()))
    resource = tuple(sorted((k, repr(v)) for k, v in p.resource.items()))
    return (p.name, p.kind, attrs, resource)


def _current_points(points: Iterable["MetricPoint"]) -> list["MetricPoint"]:
    """Collapse repeated exports: cumulative sums, histograms and gauges report the state
    of a series, so only its latest point counts; delta points each add something."""
    latest: dict[tuple[Any, ...], MetricPoint] = {}
    deltas: list[MetricPoint] = []
    for p in points:
        if p.temporality == "DELTA":
            deltas.append(p)
            continue
        key = _series_key(p)
        if key not in latest or p.time_ns >= latest[key].time_ns:
            latest[key] = p
    return list(latest.values()) + deltas


def _quantile(q: float, counts: Sequence[int], bounds: Sequence[float],
              lo: float | None, hi: float | None) -> float | None:
    """Estimate quantile ``q`` by linear interpolation inside explicit buckets."""
    total = sum(counts)
    if total <= 0 or len(counts) != len(bounds) + 1:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if not c or seen + c < rank:
            seen += c
            continue
        # Bucket i holds (bounds[i-1], bounds[i]]; the first and the overflow bucket are
        # open-ended, so borrow the recorded min/max (or 0 / the last bound) there.
        if i == 0:
            lower = lo if lo is not None else min(0.0, bounds[0]) if bounds else 0.0
        else:
            lower = bounds[i - 1]
        upper = bounds[i] if i < len(bounds) else (hi if hi is not None else lower)
        if lo is not None:
            lower = max(lower, lo)
        if hi is not None:
            upper = min(upper, hi)
        upper = max(upper, lower)
        return lower + (upper - lower) * (rank - seen) / c
    return hi


def _quantity(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":  # durations read better in ms at HTTP scale
        return f"{value * 1000:.1f}ms"
    if unit == "ms":
        return f"{value:.1f}ms"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    number = f"{value:.4g}" if isinstance(value, float) else str(value)
    # "{retry}"-style units are annotations (UCUM "1"); only real units are worth printing.
    if unit and unit != "1" and not unit.startswith("{"):
        number += clean(unit, 8)
    return number


def summarize_metrics(points: list["MetricPoint"]) -> str:
    """A compact table: one row per (metric, target), target = server.address:port,
    peer.service or "-". Sums and gauges are added up across the series of a row;
    histograms show count, p50 and p95 (estimated from the buckets).
    The resilience metrics come first, the rest alphabetically."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for p in _current_points(points):
        key = (clean(p.name, 60), _target(p.attributes))
        row = rows.setdefault(key, {"kind": p.kind, "unit": p.unit, "value": 0,
                                    "count": 0, "counts": None, "bounds": None,
                                    "min": None, "max": None})
        if p.kind in ("sum", "gauge"):
            row["value"] += p.value or 0
            continue
        row["count"] += p.count or 0
        if p.kind != "histogram" or not p.bucket_counts:
            continue
        if row["counts"] is None:
            row["counts"], row["bounds"] = list(p.bucket_counts), p.explicit_bounds
        elif row["bounds"] == p.explicit_bounds and len(row["counts"]) == len(p.bucket_counts):
            row["counts"] = [a + b for a, b in zip(row["counts"], p.bucket_counts)]
        if p.min is not None:
            row["min"] = p.min if row["min"] is None else min(row["min"], p.min)
        if p.max is not None:
            row["max"] = p.max if row["max"] is None else max(row["max"], p.max)
    if not rows:
        return "(no metrics)"

    def order(key: tuple[str, str]) -> tuple[int, str, str]:
        name, target = key
        rank = RESILIENCE_METRICS.index(name) if name in RESILIENCE_METRICS else len(RESILIENCE_METRICS)
        return (rank, name, target)

    table = [("metric", "target", "kind", "value")]
    for key in sorted(rows, key=order):
        row = rows[key]
        unit = row["unit"]
        if row["kind"] in ("sum", "gauge"):
            value = _quantity(row["value"], unit)
        else:
            value = f"count={row['count']}"
            if row["counts"] is not None:
                args = (row["counts"], row["bounds"], row["min"], row["max"])
                value += (f" p50={_quantity(_quantile(0.5, *args), unit)}"
                          f" p95={_quantity(_quantile(0.95, *args), unit)}")
        table.append((key[0], key[1], row["kind"], value))
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
        for r in table
    )
