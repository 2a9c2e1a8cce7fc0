"""`otel-integration receive` prints each trace once: complete, or quiet long enough; late spans marked."""

from __future__ import annotations

from otel_integration.devtools import receive
from otel_integration.devtools.otlp import Span
from tests.conftest import FakeClock


def span(span_id: str, parent: str = "", trace: str = "t1", name: str = "GET", kind: str = "SERVER") -> Span:
    return Span(trace_id=trace, span_id=span_id, parent_span_id=parent, name=name, kind=kind, start_ns=int(span_id, 16),
                end_ns=int(span_id, 16) + 10)


def test_a_trace_split_over_two_batches_is_printed_once_complete():
    """The issue's case: printed twice, first as orphans "parent not received", then whole."""
    clock = FakeClock()
    buffer = receive.TraceBuffer(clock)
    buffer.add([span("2", parent="1", kind="CLIENT")])  # the child's service exported first
    clock.advance(receive.QUIET + 0.1)
    assert buffer.ready() == []  # incomplete: its root has not come yet
    buffer.add([span("1")])
    assert buffer.ready() == []  # complete, not yet quiet
    clock.advance(receive.QUIET)
    ((spans, late),) = buffer.ready()
    assert {s.span_id for s in spans} == {"1", "2"} and not late
    assert buffer.ready() == []


def test_an_incomplete_trace_is_printed_after_the_longer_quiet_period():
    clock = FakeClock()
    buffer = receive.TraceBuffer(clock)
    buffer.add([span("2", parent="never-exported")])
    clock.advance(receive.INCOMPLETE_QUIET - 0.1)
    assert buffer.ready() == []
    clock.advance(0.1)
    ((spans, late),) = buffer.ready()
    assert [s.span_id for s in spans] == ["2"] and not late


def test_late_spans_are_printed_on_their_own_marked_late():
    clock = FakeClock()
    buffer = receive.TraceBuffer(clock)
    buffer.add([span("1")])
    clock.advance(receive.QUIET)
    assert len(buffer.ready()) == 1
    buffer.add([span("3", parent="1")])
    clock.advance(receive.QUIET)
    ((spans, late),) = buffer.ready()
    assert [s.span_id for s in spans] == ["3"] and late


