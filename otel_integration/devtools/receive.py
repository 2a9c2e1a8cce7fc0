"""``otel-integration receive``: an OTLP/HTTP receiver that prints every trace as a tree, once.

A trace's spans arrive in several export batches, one or more per service
(each exports on its own schedule, 5 s by default). `TraceBuffer` holds a
trace until it is complete (a root span, and the parent of every span) and
has been quiet for `QUIET` seconds; an incomplete one (a parent that is never
exported, a service that is down) is printed once it has been quiet for
`INCOMPLETE_QUIET` seconds. Spans that arrive for a trace already printed
are printed on their own, marked as late, never the whole trace again.

Every span received is shown: services under this distro no longer make the
ASGI middleware's per-message ``http send`` / ``http receive`` spans unless
``OTEL_INTEGRATION_ASGI_INTERNAL_SPANS`` asks for them, and then they are wanted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from otel_integration.devtools.otlp import Span
from otel_integration.devtools.receiver import OTLPReceiver
from otel_integration.devtools.traceview import render_trace, summarize_metrics

QUIET = 1.0  # seconds without a new span before a complete trace is printed
INCOMPLETE_QUIET = 6.0  # before an incomplete one is (longer than the SDK's 5 s export delay)
REMEMBERED = 10_000  # printed trace IDs kept, to mark late spans as such


def complete(spans: list[Span]) -> bool:
    """A root span, and every span's parent among them."""
    ids = {s.span_id for s in spans}
    return any(not s.parent_span_id for s in spans) and all(not s.parent_span_id or s.parent_span_id in ids for s in spans)


class TraceBuffer:
    """Groups spans by trace; releases each trace once, and late spans on their own."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[float, list[Span]]] = {}
        self._printed: OrderedDict[str, None] = OrderedDict()

    def add(self, spans: list[Span]) -> None:
        now = self._clock()
        with self._lock:
            for span in spans:
                _, bucket = self._pending.get(span.trace_id, (now, []))
                bucket.append(span)
                self._pending[span.trace_id] = (now, bucket)

    def ready(self, *, flush_all: bool = False) -> list[tuple[list[Span], bool]]:
        """(spans, late) for every trace (or late part of one) to print now, oldest first."""
        now = self._clock()
        released: list[tuple[list[Span], bool]] = []
        with self._lock:
            for trace_id, (last, spans) in list(self._pending.items()):
                late = trace_id in self._printed
                wait = QUIET if late or complete(spans) else INCOMPLETE_QUIET
                if flush_all or now - last >= wait:
                    del self._pending[trace_id]
                    released.append((spans, late))
                    self._printed[trace_id] = None
                    self._printed.move_to_end(trace_id)
                    while len(self._printed) > REMEMBERED:
                        self._printed.popitem(last=False)
        released.sort(key=lambda item: min(s.start_ns for s in item[0]))
        return released


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="otel-integration receive",
        description="Receive OTLP/HTTP and print every trace as a tree once it is complete.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318, help="0 picks a free port")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after SECONDS (default: until Ctrl-C)")
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    args = parser.parse_args(argv)

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    buffer = TraceBuffer()
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

    def emit(traces: list[tuple[list[Span], bool]]) -> None:
        for spans, late in traces:
            if late:
                print(f"late spans of trace {spans[0].trace_id} (printed already; they arrived after it):", flush=True)
            print(render_trace(spans, width=args.width, color=color), flush=True)
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
