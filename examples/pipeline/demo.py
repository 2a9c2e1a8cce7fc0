"""``make demo``: three instrumented services, four fault phases, the traces in your terminal.

    python examples/pipeline/demo.py                  # embedded OTLP receiver, no collector
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 python examples/pipeline/demo.py

Starts dms, extract and catalog (plain FastAPI + httpx, see the modules next to this
file) under ``opentelemetry-instrument``, drives documents through them while extract
is healthy, flaky, down and back, then prints a few traces as waterfalls, the
resilience metrics per downstream and where to look next. With
``OTEL_EXPORTER_OTLP_ENDPOINT`` set, telemetry goes there instead (e.g. the compose
stack in ``collector/``) and the demo prints how to find the traces in Jaeger.

Every service runs in its own process group and is stopped on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orchestrate import Phase, Pipeline, Result, pids_alive, trace_for  # noqa: E402

JAEGER_URL = "http://localhost:16686"
class Printer:
    def __init__(self, color: bool) -> None:
        self.color = color

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def dim(self, text: str) -> str:
        return self.paint(text, "2")

    def heading(self, text: str) -> None:
        print()
        print(self.bold(f"== {text} " + "=" * max(0, 70 - len(text))), flush=True)


def describe(result: Result, p: Printer) -> str:
    body = result.body
    if result.status == 201:
        outcome = p.paint("201", "32") + (f"  registered {body.get('catalog_id')}, "
                                         f"quality {body.get('quality', {}).get('score')}")
    else:
        reason = body.get("reason", "")
        fast = " (failed fast, no call to extract)" if reason == "CircuitOpenError" else ""
        status = f", {body['status']} after retries" if "status" in body else ""
        outcome = p.paint(str(result.status), "31") + (
            f"  {{\"error\": \"{body.get('error')}\", \"downstream\": \"{body.get('downstream')}\", "
            f"\"reason\": \"{reason}\"}}{status}{fast}"
        )
    if result.sent_request_id:
        rid = f"X-Request-ID {result.sent_request_id:<18}"
    else:
        rid = f"(no ID sent) -> {result.response_request_id or '?':<18}"
    return f"  POST /documents  {rid} {result.elapsed_ms:6.0f} ms  {outcome}"


def pick_examples(results: list[Result]) -> list[tuple[str, Result]]:
    """The traces worth reading: healthy, retried, fast-failed, recovered."""
    chosen: list[tuple[str, Result]] = []

    def first(predicate: Any, label: str) -> None:
        for r in results:
            if r.request_id and predicate(r):
                chosen.append((label, r))
                return

    first(lambda r: r.phase == "healthy" and r.status == 201,
          "healthy: dms -> extract (ocr, extract -> catalog bulk) -> catalog (-> extract schema)")
    first(lambda r: r.phase == "flaky" and r.status == 201,
          "flaky: 503 bursts from extract, absorbed by retries (retry #n = http.request.resend_count)")
    first(lambda r: r.phase == "down" and r.body.get("reason") == "CircuitOpenError",
          "down: the breaker is open, dms fails fast with CircuitOpenError and answers 503")
    first(lambda r: r.phase == "recovered" and r.status == 201,
          "recovered: the half-open trial call succeeded, the breaker closed")
    first(lambda r: r.phase == "drift" and r.status == 201,
          "drift: catalog's validate() rejected extract's new schema shape (span event, counter)")
    return chosen


def resilience_table(points: list[Any], names: dict[str, str] | None = None) -> str:
    """Attempts, retries, budget, breaker transitions and fast failures per caller and
    downstream. ``names`` maps "host:port" to a logical name for series without peer.service."""
    names = names or {}
    latest: dict[tuple, Any] = {}
    for p in points:
        if not p.name.startswith("http.client."):
            continue
        key = (p.service_name, p.name, tuple(sorted((k, str(v)) for k, v in p.attributes.items())))
        if key not in latest or p.time_ns >= latest[key].time_ns:
            latest[key] = p
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"attempts": 0, "retries": 0, "budget": 0, "rejections": 0,
                 "transitions": defaultdict(int), "state": None})
    states = {0: "closed", 1: "half_open", 2: "open"}
    for (service, name, _), p in latest.items():
        address = f"{p.attributes.get('server.address')}:{p.attributes.get('server.port')}"
        target = str(p.attributes.get("peer.service") or names.get(address, address))
        row = rows[(service, target)]
        value = p.value or 0
        if name == "http.client.request.duration":
            row["attempts"] += p.count or 0
        elif name == "http.client.retries":
            row["retries"] += value
        elif name == "http.client.retry_budget.exhausted":
            row["budget"] += value
        elif name == "http.client.circuit_breaker.rejections":
            row["rejections"] += value
        elif name == "http.client.circuit_breaker.transitions":
            row["transitions"][str(p.attributes.get("circuit_breaker.state"))] += value
        elif name == "http.client.circuit_breaker.state":
            row["state"] = states.get(int(value), str(value))
    if not rows:
        return "  (no resilience metrics received)"
    header = ("caller", "downstream", "attempts", "retries", "budget exhausted", "fast-failed",
              "breaker transitions", "breaker now")
    table = [header]
    for (service, target), row in sorted(rows.items()):
        order = ("open", "half_open", "closed")
        transitions = ", ".join(f"->{s} x{int(row['transitions'][s])}"
                                for s in order if row["transitions"].get(s)) or "-"
        table.append((service, target, str(int(row["attempts"])), str(int(row["retries"])),
                      str(int(row["budget"])),
                      str(int(row["rejections"])), transitions, row["state"] or "closed"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  " + "  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip()
                     for r in table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the services' logs go (default: a new temporary directory)")
    parser.add_argument("--open-seconds", type=float, default=2.0,
                        help="OTEL_INTEGRATION_BREAKER_OPEN_SECONDS for the services (default 2)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    args = parser.parse_args(argv)

    color = args.color == "always" or (
        args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    p = Printer(color)
    width = max(100, min(150, shutil.get_terminal_size((120, 24)).columns))
    external = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="otel-integration-demo-"))

    # Ctrl-C raises KeyboardInterrupt already; make SIGTERM/SIGHUP do the same, so the
    # `finally` below stops every service whichever way the demo ends.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, interrupt)

    started = time.monotonic()
    pipe = Pipeline(workdir, breaker_open_seconds=args.open_seconds, endpoint=external)
    print(p.bold("otel-integration demo: dms -> extract -> catalog, three plain FastAPI + httpx "
                 "services under opentelemetry-instrument"))
    try:
        try:
            pipe.start()
        finally:
            if pipe.receiver is not None:
                print(f"  OTLP receiver  {pipe.endpoint}  (embedded; set OTEL_EXPORTER_OTLP_ENDPOINT "
                      "to export elsewhere)")
            else:
                print(f"  exporting to   {pipe.endpoint}  (OTEL_EXPORTER_OTLP_ENDPOINT)")
            for s in pipe.services.values():
                print(f"  {s.name:<8} {s.url}  pid {s.pid}  log {s.log_path}")
        print(f"  ready in {time.monotonic() - started:.1f} s", flush=True)

        phases = pipe.phases()

        def on_phase(phase: Phase) -> None:
            number = phases.index(phase) + 1
            p.heading(f"phase {number}/{len(phases)}: {phase.name}")
            print(f"  {phase.title}")
            print(p.dim(f"  POST extract/admin/fault {phase.fault}"
                        + (", then wait until dms/healthz shows extract's breaker half-open"
                           if phase.until_half_open else "")),
                  flush=True)

        def on_result(result: Result) -> None:
            print(describe(result, p), flush=True)

        def on_health(health: dict[str, Any] | None) -> None:
            if health is None:
                return  # no health endpoint (OTEL_INTEGRATION_HEALTH_PATH unsupported)
            body = health["body"]
            if isinstance(body, dict) and isinstance(body.get("dependencies"), dict):
                deps = ", ".join(f"{name} {dep.get('status')} (breaker {dep.get('breaker')})"
                                 for name, dep in body["dependencies"].items())
                text = f"{body.get('status')}: {deps}"
            else:
                text = str(body)
            print(f"  GET dms/healthz -> {health['status']}  {text}", flush=True)

        results = pipe.run_phases(on_result=on_result, on_phase=on_phase, on_health=on_health)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the services", file=sys.stderr)
        pipe.stop()
        pipe.close_receiver()
        return 130
    finally:
        pids = [s.pid for s in pipe.services.values() if s.pid]
        pipe.stop()

    leftovers = pids_alive(pids)
    pipe.wait_for_telemetry()

    if pipe.receiver is not None:
        spans = pipe.receiver.spans()
        p.heading("traces (from the embedded receiver)")
        from otel_integration.devtools.traceview import render_trace

        for label, result in pick_examples(results):
            trace = trace_for(spans, result.request_id)
            print(p.bold(f"{label}   X-Request-ID {result.request_id}"))
            print(render_trace(trace, width=width, color=color) if trace else "  (trace not received)")
            print()
        p.heading("resilience metrics per downstream")
        names = {f"127.0.0.1:{s.port}": s.name for s in pipe.services.values()}
        print(resilience_table(pipe.receiver.metrics(), names))
        print(p.dim("  attempts: HTTP requests sent (http.client.request.duration); fast-failed: "
                    "calls rejected by an open breaker, without I/O"))
        print(p.dim(f"  received {len(spans)} spans, {len(pipe.receiver.metrics())} metric points, "
                    f"{len(pipe.receiver.logs())} log records"))
        pipe.close_receiver()

    p.heading("where to look next")
    ids = [r.request_id for r in results if r.request_id]
    example = next((r.request_id for r in results if r.phase == "flaky" and r.request_id), ids[0])
    print(f"  service logs: {workdir}/{{dms,extract,catalog}}.log (one line per request, with request_id)")
    if pipe.receiver is None:
        print(f"  Jaeger: {JAEGER_URL}  ->  Search, Service: dms, "
              f"Tags: http.request.header.x-request-id=[\"{example}\"]")
        print("  (header attributes are string arrays; Jaeger matches them as that JSON text)")
        print(f"  (the demo's X-Request-IDs: {', '.join(ids)})")
    else:
        print(f"  Jaeger: {JAEGER_URL} once the stack in collector/ is up "
              "(docker compose -f collector/compose.yaml up -d), then:")
        print(f"    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 {Path(sys.executable).name} "
              f"examples/pipeline/demo.py")
        print(f"    and search Service: dms, Tags: http.request.header.x-request-id=[\"<id>\"], "
              f"e.g. [\"{example}\"]")
    print("  live traces without Docker: otel-integration receive --port 4318")
    status = "no service process left running" if not leftovers else \
        p.paint(f"processes still alive: {leftovers}", "31")
    print(f"\nfinished in {time.monotonic() - started:.1f} s; {status}")
    return 0 if not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
