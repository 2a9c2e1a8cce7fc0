"""The terminal trace view and metrics table, on hand-built receiver objects."""

from __future__ import annotations

import re

from otel_integration.devtools.receiver import MetricPoint, Span
from otel_integration.devtools.traceview import clean, render_trace, render_traces, summarize_metrics

MS = 1_000_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def span(span_id: str, parent: str, name: str, start_ms: int, end_ms: int, *,
         kind: str = "INTERNAL", service: str = "frontend", status: str = "UNSET",
         message: str = "", trace_id: str = TRACE, **attributes: object) -> Span:
    return Span(
        trace_id=trace_id, span_id=span_id.ljust(16, "0"),
        parent_span_id=parent.ljust(16, "0") if parent else "",
        name=name, kind=kind, start_ns=1_700_000_000_000 * MS + start_ms * MS,
        end_ns=1_700_000_000_000 * MS + end_ms * MS, status_code=status,
        status_message=message, attributes=dict(attributes),
        resource={"service.name": service},
    )


def checkout_trace() -> list[Span]:
    # Deliberately shuffled: the view must order by tree and start time itself.
    return [
        span("c2", "root", "GET", 40, 80, kind="CLIENT", **{
            "http.response.status_code": 200, "http.request.resend_count": 1}),
        span("srv", "c2", "GET /items", 45, 78, kind="SERVER", service="inventory"),
        span("root", "", "POST /checkout", 0, 120, kind="SERVER", status="OK"),
        span("c1", "root", "GET", 5, 35, kind="CLIENT", status="ERROR", message="upstream", **{
            "http.response.status_code": 503, "error.type": "503",
            "http.request.header.x-request-id": ("req-42",)}),
        span("orphan", "gone", "late job", 90, 100, service="worker"),
    ]


def line_of(text: str, needle: str) -> str:
    (line,) = [line for line in text.splitlines() if needle in line]
    return line


def test_tree_order_and_indentation() -> None:
    text = render_trace(checkout_trace())
    lines = text.splitlines()
    assert lines[0].startswith(f"trace {TRACE}  5 spans  120.0 ms")
    assert "1 ERROR" in lines[0]
    labels = [re.split(r"\s*\|", line, maxsplit=1)[0] for line in lines[1:]]
    assert labels == [
        "frontend: POST /checkout SERVER",
        "├─ frontend: GET CLIENT",
        "└─ frontend: GET CLIENT",
        "   └─ inventory: GET /items SERVER",
        "worker: late job INTERNAL",  # orphan: parent never arrived -> root level
    ]
    assert "(parent gone000000000000 not received)" in lines[5]


def test_markers_for_errors_retries_status_and_request_id() -> None:
    text = render_trace(checkout_trace())
    failed = line_of(text, "├─")
    assert "ERROR (upstream)" in failed
    assert "HTTP 503" in failed and "error.type=503" in failed and "req=req-42" in failed
    retried = line_of(text, "└─ frontend")
    assert "retry #1" in retried and "HTTP 200" in retried
    assert "ERROR" not in retried and "req=" not in retried
    assert line_of(text, "POST /checkout").rstrip().endswith("120.0 ms OK")
    assert " 30.0 ms" in failed


def test_bars_follow_the_timeline() -> None:
    text = render_trace(checkout_trace(), width=100)
    bars = {name: re.search(r"\|([^|]*)\|", line_of(text, name)).group(1)  # type: ignore[union-attr]
            for name in ("POST /checkout", "├─", "GET /items", "late job")}
    assert set(bars["POST /checkout"]) == {"█"}  # the root spans the whole trace
    first = {name: bar.index("█") for name, bar in bars.items()}
    assert first["POST /checkout"] == 0 < first["├─"] < first["GET /items"] < first["late job"]
    assert len({len(bar) for bar in bars.values()}) == 1
    for line in text.splitlines()[1:]:
        core = line.split(" ms")[0] + " ms ERROR"
        assert len(core) <= 100


def test_hostile_values_are_sanitized_and_truncated() -> None:
    evil = span("e", "", "GET\x1b[2J\r\nFAKE LINE", 0, 1, kind="CLIENT", service="svc\x07\u202e", **{
        "http.request.header.x-request-id": ("id\x1b]0;pwned\x07-" + "x" * 500,),
        "error.type": "Boom\nInjected",
        "http.response.status_code": "5\x0003",
    })
    text = render_trace([evil], color=False)
    assert not any(ch in text for ch in "\x1b\x07\r\x00\u202e")
    assert len(text.splitlines()) == 2  # the newlines in values did not create lines
    assert "req=id]0;pwned-xxx" in text and "…" in text and "x" * 100 not in text
    assert "error.type=BoomInjected" in text and "HTTP 503" in text
    assert clean("a\tb\u200bc" + "z" * 10, limit=6) == "abczz…"


def test_color_output_only_uses_our_escape_codes() -> None:
    evil = span("e", "", "x\x1b[31m", 0, 1, status="ERROR", message="\x1b[5mblink")
    text = render_trace([evil], color=True)
    assert "\x1b[31m" in text  # we paint ERROR red ...
    assert "\x1b[5m" not in text and "x[31m" in text  # ... the sender cannot


def test_render_traces_orders_traces_by_start() -> None:
    later = [span("b", "", "second", 500, 600, trace_id="b" * 32)]
    earlier = [span("a", "", "first", 0, 10, trace_id="a" * 32)]
    text = render_traces(later + earlier)
    assert text.index("first") < text.index("second")
    assert text.count("trace ") == 2 and "\n\n" in text
    assert render_trace([]) == "(no spans)"


def test_zero_duration_and_parent_cycles_still_render() -> None:
    spans = [span("a", "b", "ping", 0, 0), span("b", "a", "pong", 0, 0)]
    text = render_trace(spans)
    assert "ping" in text and "pong" in text and "0.0 ms" in text


def point(name: str, kind: str, target: dict[str, object], t: int = 1, **kw: object) -> MetricPoint:
    return MetricPoint(name=name, unit=str(kw.pop("unit", "")), kind=kind,
                       attributes=target, temporality=str(kw.pop("temporality", "CUMULATIVE")),
                       time_ns=t, **kw)  # type: ignore[arg-type]


def test_metrics_summary_table() -> None:
    inv = {"server.address": "inventory", "server.port": 8080}
    points = [
        # Two cumulative exports of one series: only the latest counts.
        point("http.client.retries", "sum", {**inv, "attempt": 1}, t=1, value=2, unit="{retry}"),
        point("http.client.retries", "sum", {**inv, "attempt": 1}, t=2, value=3, unit="{retry}"),
        point("http.client.retries", "sum", {**inv, "attempt": 2}, t=2, value=1, unit="{retry}"),
        point("http.client.retries", "sum", {"peer.service": "payments"}, value=4),
        point("http.client.circuit_breaker.rejections", "sum", inv, value=5,
              temporality="DELTA"),
        point("http.client.circuit_breaker.rejections", "sum", inv, value=2,
              temporality="DELTA", start_ns=9),
        point("http.client.circuit_breaker.state", "gauge", inv, value=2, temporality=""),
        point("http.client.request.duration", "histogram", inv, unit="s", count=10, sum=1.0,
              bucket_counts=(0, 8, 2, 0), explicit_bounds=(0.005, 0.01, 0.1)),
        point("http.client.request.duration", "histogram", {"x": "y", **inv}, unit="s",
              count=10, sum=1.0, bucket_counts=(0, 8, 2, 0),
              explicit_bounds=(0.005, 0.01, 0.1)),
        point("aaa.other", "sum", {}, value=1.5),
    ]
    rows = {tuple(line.split()[:2]): line for line in summarize_metrics(points).splitlines()}
    assert rows[("http.client.retries", "inventory:8080")].split()[-1] == "4"
    assert rows[("http.client.retries", "payments")].split()[-1] == "4"
    assert rows[("http.client.circuit_breaker.rejections", "inventory:8080")].split()[-1] == "7"
    assert rows[("http.client.circuit_breaker.state", "inventory:8080")].split()[-1] == "2"
    duration = rows[("http.client.request.duration", "inventory:8080")]
    # 20 samples, 16 in (5ms, 10ms], 4 in (10ms, 100ms]: p50 at rank 10 -> 5 + 5*10/16 ms.
    assert "count=20" in duration and "p50=8.1ms" in duration and "p95=77.5ms" in duration
    assert rows[("aaa.other", "-")].split()[-1] == "1.5"
    order = [key[0] for key in rows]
    assert order[0] == "metric" and order[1] == "http.client.retries" and order[-1] == "aaa.other"
    assert summarize_metrics([]) == "(no metrics)"


def test_metric_attribute_values_are_sanitized() -> None:
    text = summarize_metrics([point("http.client.retries", "sum",
                                    {"server.address": "evil\x1b[2J\nhost", "server.port": 1},
                                    value=1)])
    assert "\x1b" not in text and len(text.splitlines()) == 2
    assert "evil[2Jhost:1" in text
