"""W3C Trace Context conformance, Level 1 and Level 2: the specification's cases.

Sections are those of W3C Trace Context Level 1 (www.w3.org/TR/trace-context-1)
and Level 2 (www.w3.org/TR/trace-context-2, same numbering). Every case runs
twice: against the propagator the distro installs (a server span and a
client span made with the SDK in between, as a service does), and through a
real Starlette service under ``opentelemetry-instrument``: the case's
headers go over a socket exactly as written, the service calls a recording
peer, and the peer's ``traceparent``/``tracestate`` are checked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from otel_integration._distro import conformant, default_propagator
from otel_integration._settings import Settings
from otel_integration._tracecontext import W3CTraceContextPropagator
from tests.launched import LaunchedService, free_port, raw_request, service_env, uvicorn_argv
from tests.peers import FaultServer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
UNSAMPLED = f"00-{TRACE}-{PARENT}-00"
SAMPLED, RANDOM = 0x01, 0x02


@dataclass(frozen=True)
class Case:
    id: str
    section: str
    headers: tuple[tuple[str, str], ...]
    continues: bool  # the outgoing call keeps TRACE (else: a new trace-id)
    tracestate: dict[str, str] | None = None  # the outgoing tracestate, when checked ({}: none)
    flags: int | None = None  # the outgoing trace-flags, when checked


def tp(value: str, *more: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("traceparent", value), *more)


def ts(*values: str) -> tuple[tuple[str, str], ...]:
    return (("traceparent", UNSAMPLED), *(("tracestate", v) for v in values))


def members(count: int) -> str:
    return ",".join(f"bar{i:02d}={i:02d}" for i in range(1, count + 1))


KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")

TRACEPARENT_CASES = [
    # --- traceparent (§3.2) -------------------------------------------------------------------
    Case("no-headers", "§3.2 (none received: start a trace)", (), False),
    Case("valid", "§3.2.2", tp(VALID), True),
    Case("duplicated", "§3.2 (one traceparent field; two are invalid)",
         tp(f"00-{OTHER_TRACE}-{PARENT}-01", ("traceparent", VALID)), False),
    Case("name-hyphen", "§3.2.1 header name", (("trace-parent", VALID),), False),
    Case("name-dot", "§3.2.1 header name", (("trace.parent", VALID),), False),
    Case("name-mixed-case", "§3.2.1 any case", (("TrAcEpArEnT", VALID),), True),
    Case("name-upper-case", "§3.2.1 any case", (("TRACEPARENT", VALID),), True),
    Case("v00-trailing-dot", "§3.2.2.2 version-format of 00", tp(VALID + "."), False),
    Case("v00-trailing-fields", "§3.2.2.2 version-format of 00", tp(VALID + "-what-the-future-will-be-like"), False),
    Case("vcc", "§3.2.4 a higher version", tp(f"cc-{TRACE}-{PARENT}-01"), True),
    Case("vcc-more-fields", "§3.2.4 a higher version", tp(f"cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like"), True),
    Case("vcc-no-dash", "§3.2.4 flags followed by the end or a dash",
         tp(f"cc-{TRACE}-{PARENT}-01.what-the-future-will-be-like"), False),
    Case("vff", "§3.2.2.1 version ff is invalid", tp(f"ff-{TRACE}-{PARENT}-01"), False),
    Case("version-dot-first", "§3.2.2.1 2HEXDIGLC", tp(f".0-{TRACE}-{PARENT}-01"), False),
    Case("version-dot-second", "§3.2.2.1 2HEXDIGLC", tp(f"0.-{TRACE}-{PARENT}-01"), False),
    Case("version-3-digits", "§3.2.2.1 2HEXDIGLC", tp(f"000-{TRACE}-{PARENT}-01"), False),
    Case("version-4-digits", "§3.2.2.1 2HEXDIGLC", tp(f"0000-{TRACE}-{PARENT}-01"), False),
    Case("version-1-digit", "§3.2.2.1 2HEXDIGLC", tp(f"0-{TRACE}-{PARENT}-01"), False),
    Case("version-upper-case", "§3.2.2.1 HEXDIGLC is lowercase", tp(f"CC-{TRACE}-{PARENT}-01"), False),
    Case("trace-id-zero", "§3.2.2.3 all zeroes forbidden", tp(f"00-{'0' * 32}-{PARENT}-01"), False),
    Case("trace-id-dot-first", "§3.2.2.3", tp(f"00-.{TRACE[1:]}-{PARENT}-01"), False),
    Case("trace-id-dot-last", "§3.2.2.3", tp(f"00-{TRACE[:-1]}.-{PARENT}-01"), False),
    Case("trace-id-33", "§3.2.2.3 32HEXDIGLC", tp(f"00-{TRACE}3-{PARENT}-01"), False),
    Case("trace-id-31", "§3.2.2.3 32HEXDIGLC", tp(f"00-{TRACE[:-1]}-{PARENT}-01"), False),
    Case("trace-id-upper-case", "§3.2.2.3 HEXDIGLC", tp(f"00-{TRACE.upper()}-{PARENT}-01"), False),
    Case("parent-id-zero", "§3.2.2.4 all zeroes forbidden", tp(f"00-{TRACE}-{'0' * 16}-01"), False),
    Case("parent-id-dot-first", "§3.2.2.4", tp(f"00-{TRACE}-.{PARENT[1:]}-01"), False),
    Case("parent-id-dot-last", "§3.2.2.4", tp(f"00-{TRACE}-{PARENT[:-1]}.-01"), False),
    Case("parent-id-17", "§3.2.2.4 16HEXDIGLC", tp(f"00-{TRACE}-{PARENT}7-01"), False),
    Case("parent-id-15", "§3.2.2.4 16HEXDIGLC", tp(f"00-{TRACE}-{PARENT[:-1]}-01"), False),
    Case("flags-dot-first", "§3.2.2.5 2HEXDIGLC", tp(f"00-{TRACE}-{PARENT}-.0"), False),
    Case("flags-dot-last", "§3.2.2.5 2HEXDIGLC", tp(f"00-{TRACE}-{PARENT}-0."), False),
    Case("flags-3-digits", "§3.2.2.5 2HEXDIGLC", tp(f"00-{TRACE}-{PARENT}-001"), False),
    Case("flags-1-digit", "§3.2.2.5 2HEXDIGLC", tp(f"00-{TRACE}-{PARENT}-1"), False),
    Case("ows-leading-space", "§3.2 OWS around the value", tp(" " + VALID), True),
    Case("ows-leading-tab", "§3.2 OWS around the value", tp("\t" + VALID), True),
    Case("ows-trailing-space", "§3.2 OWS around the value", tp(VALID + " "), True),
    Case("ows-trailing-tab", "§3.2 OWS around the value", tp(VALID + "\t"), True),
    Case("ows-both", "§3.2 OWS around the value", tp("\t " + VALID + " \t"), True),
]
FLAGS_CASES = [
    # --- trace-flags: sampled (Level 1) and random-trace-id (Level 2, §3.2.2.5.2) ---------------
    Case("sampled-kept", "§3.2.2.5.1 sampled", tp(VALID), True, flags=SAMPLED),
    Case("unsampled-kept", "§3.2.2.5.1 sampled", tp(UNSAMPLED), True, flags=0),
    Case("random-kept", "Level 2 §3.2.2.5.2 random, propagated unchanged", tp(f"00-{TRACE}-{PARENT}-03"), True,
         flags=SAMPLED | RANDOM),
    Case("not-random-kept", "Level 2 §3.2.2.5.2 not set by the caller: stays unset", tp(VALID), True,
         flags=SAMPLED),
    Case("reserved-bits-cleared", "§3.2.2.5.3 other flags MUST be zero", tp(f"00-{TRACE}-{PARENT}-ff"), True,
         flags=SAMPLED | RANDOM),
    Case("new-trace-is-random", "Level 2 §3.2.2.5.2 a new trace-id is random", (), False, flags=SAMPLED | RANDOM),
    Case("restart-is-random", "Level 2 §3.2.2.5.2 and §3.4 restart", tp(f"ff-{TRACE}-{PARENT}-00"), False,
         flags=SAMPLED | RANDOM),
]
TRACESTATE_CASES = [
    # --- tracestate (§3.3) --------------------------------------------------------------------
    Case("tracestate-without-traceparent", "§3.3 MUST NOT parse tracestate without a valid traceparent",
         (("tracestate", "foo=1"),), False, tracestate={}),
    Case("tracestate-with-invalid-traceparent", "§3.3", tp(f"00-{TRACE}-{PARENT}-0.", ("tracestate", "foo=1")),
         False, tracestate={}),
    Case("tracestate-inherited", "§3.3.1", ts("foo=1,bar=2"), True, tracestate={"foo": "1", "bar": "2"}),
    Case("tracestate-name-hyphen", "§3.3.1 header name", tp(UNSAMPLED, ("trace-state", "foo=1")), True,
         tracestate={}),
    Case("tracestate-name-dot", "§3.3.1 header name", tp(UNSAMPLED, ("trace.state", "foo=1")), True,
         tracestate={}),
    Case("tracestate-name-mixed-case", "§3.3.1 any case", tp(UNSAMPLED, ("TrAcEsTaTe", "foo=1")), True,
         tracestate={"foo": "1"}),
    Case("tracestate-empty", "§3.3.1.1 empty header accepted", ts(""), True, tracestate={}),
    Case("tracestate-empty-then-member", "§3.3.1.1 empty list-member", ts("", "foo=1"), True,
         tracestate={"foo": "1"}),
    Case("tracestate-member-then-empty", "§3.3.1.1 empty list-member", ts("foo=1", ""), True,
         tracestate={"foo": "1"}),
    Case("tracestate-combined-in-order", "§3.3.1.1 multiple fields combined (RFC 9110 §5.3)",
         ts("foo=1,bar=2", "rojo=1,congo=2", "baz=3"), True,
         tracestate={"foo": "1", "bar": "2", "rojo": "1", "congo": "2", "baz": "3"}),
    Case("tracestate-duplicated-key", "§3.3.1.5 one entry per key", ts("foo=1,foo=1"), True, tracestate={}),
    Case("tracestate-duplicated-key-values", "§3.3.1.5", ts("foo=1,foo=2"), True, tracestate={}),
    Case("tracestate-duplicated-key-fields", "§3.3.1.5", ts("foo=1", "foo=1"), True, tracestate={}),
    Case("tracestate-duplicated-key-fields-values", "§3.3.1.5", ts("foo=1", "foo=2"), True, tracestate={}),
    Case("tracestate-all-key-and-value-characters", "§3.3.1.3.1 and §3.3.1.3.2",
         ts(f"{KEY_CHARS}={VALUE_CHARS}"), True, tracestate={KEY_CHARS: VALUE_CHARS}),
    Case("tracestate-all-characters-tenant", "§3.3.1.3.1 multi-tenant-key",
         ts(f"{KEY_CHARS}@a-z0-9_-*/={VALUE_CHARS}"), True, tracestate={f"{KEY_CHARS}@a-z0-9_-*/": VALUE_CHARS}),
    Case("tracestate-ows", "§3.3.1.1 OWS around list-members", ts("foo=1 \t , \t bar=2, \t baz=3"), True,
         tracestate={"foo": "1", "bar": "2", "baz": "3"}),
    Case("tracestate-ows-tabs", "§3.3.1.1", ts("foo=1\t \t,\t \tbar=2,\t \tbaz=3"), True,
         tracestate={"foo": "1", "bar": "2", "baz": "3"}),
    Case("tracestate-ows-edges", "§3.3.1.1", ts("\t foo=1 \t"), True, tracestate={"foo": "1"}),
    Case("tracestate-key-space", "§3.3.1.3.1 key characters", ts("foo =1"), True, tracestate={}),
    Case("tracestate-key-upper-case", "§3.3.1.3.1 lcalpha", ts("FOO=1"), True, tracestate={}),
    Case("tracestate-key-dot", "§3.3.1.3.1 key characters", ts("foo.bar=1"), True, tracestate={}),
    Case("tracestate-key-digit-first", "§3.3.1.3.1 a simple-key starts with lcalpha", ts("1foo=1"), True,
         tracestate={}),
    Case("tracestate-vendor-empty", "§3.3.1.3.1 system-id", ts("foo@=1,bar=2"), True, tracestate={}),
    Case("tracestate-tenant-empty", "§3.3.1.3.1 tenant-id", ts("@foo=1,bar=2"), True, tracestate={}),
    Case("tracestate-two-at-signs", "§3.3.1.3.1", ts("foo@@bar=1,bar=2"), True, tracestate={}),
    Case("tracestate-three-parts", "§3.3.1.3.1", ts("foo@bar@baz=1,bar=2"), True, tracestate={}),
    Case("tracestate-32-members", "§3.3.1.2 up to 32 list-members", ts(members(10), members(32)[len(members(10)) + 1:]),
         True, tracestate={f"bar{i:02d}": f"{i:02d}" for i in range(1, 33)}),
    Case("tracestate-33-members", "§3.3.1.2", ts(members(10), members(33)[len(members(10)) + 1:]), True,
         tracestate={}),
    Case("tracestate-key-256", "§3.3.1.3.1 up to 256 characters", ts("foo=1", "z" * 256 + "=1"), True,
         tracestate={"foo": "1", "z" * 256: "1"}),
    Case("tracestate-key-257", "§3.3.1.3.1", ts("foo=1", "z" * 257 + "=1"), True, tracestate={}),
    Case("tracestate-tenant-241-vendor-14", "§3.3.1.3.1 tenant-id up to 241, system-id up to 14",
         ts("foo=1", "t" * 241 + "@" + "v" * 14 + "=1"), True,
         tracestate={"foo": "1", "t" * 241 + "@" + "v" * 14: "1"}),
    Case("tracestate-tenant-242", "§3.3.1.3.1", ts("foo=1", "t" * 242 + "@v=1"), True, tracestate={}),
    Case("tracestate-vendor-15", "§3.3.1.3.1", ts("foo=1", "t@" + "v" * 15 + "=1"), True, tracestate={}),
    Case("tracestate-value-equals", "§3.3.1.3.2 value characters", ts("foo=bar=baz"), True, tracestate={}),
    Case("tracestate-value-empty", "§3.3.1.3.2 at least one character", ts("foo=,bar=3"), True, tracestate={}),
    Case("tracestate-value-256", "§3.3.1.3.2 up to 256 characters", ts("foo=" + "v" * 256), True,
         tracestate={"foo": "v" * 256}),
    Case("tracestate-value-257", "§3.3.1.3.2", ts("foo=" + "v" * 257), True, tracestate={}),
    Case("tracestate-value-inner-space", "§3.3.1.3.2 a space inside, not at the end", ts("foo=a b"), True,
         tracestate={"foo": "a b"}),
]
CASES = TRACEPARENT_CASES + FLAGS_CASES + TRACESTATE_CASES
IDS = [case.id for case in CASES]


@dataclass(frozen=True)
class Outgoing:
    trace_id: str
    parent_id: str
    flags: int
    tracestate: dict[str, str]


def parse_outgoing(headers: dict[str, str]) -> Outgoing:
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert version == "00"  # §3.2.4: sent in the highest version known, 00
    tracestate: dict[str, str] = {}
    for member in headers.get("tracestate", "").split(","):
        if member.strip():
            key, _, value = member.strip().partition("=")
            tracestate[key] = value
    return Outgoing(trace_id, parent_id, int(flags, 16), tracestate)


def check(case: Case, out: Outgoing) -> None:
    assert len(out.trace_id) == 32 and len(out.parent_id) == 16
    assert out.trace_id != "0" * 32 and out.parent_id != "0" * 16
    if case.continues:
        assert out.trace_id == TRACE, "the trace should continue"
        assert out.parent_id != PARENT, "the parent-id is this service's span"
    else:
        assert out.trace_id not in (TRACE, OTHER_TRACE), "the trace should restart"
    if case.tracestate is not None:
        assert out.tracestate == case.tracestate
    if case.flags is not None:
        assert out.flags == case.flags


# --- the propagator, in process ---------------------------------------------------------------


def through_a_service_span(case: Case) -> Outgoing:
    """What a service sends on: extract, a SERVER span, a CLIENT span in it, inject."""
    propagator = default_propagator(Settings())
    carrier: dict[str, list[str]] = {}
    for name, value in case.headers:
        carrier.setdefault(name.lower(), []).append(value)  # an HTTP server lowercases names
    tracer = TracerProvider().get_tracer("test")
    ctx = propagator.extract(carrier)
    out: dict[str, str] = {}
    with tracer.start_as_current_span("server", context=ctx, kind=SpanKind.SERVER):
        with tracer.start_as_current_span("client", kind=SpanKind.CLIENT):
            propagator.inject(out)
    return parse_outgoing(out)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_propagator_follows_the_specification(case: Case) -> None:
    check(case, through_a_service_span(case))


def test_malformed_headers_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The SDK logs a bad tracestate member verbatim; ours says nothing above DEBUG, and never the value."""
    caplog.set_level("DEBUG")
    marker = "FORGED-LINE"
    propagator = W3CTraceContextPropagator()
    propagator.extract({"traceparent": [UNSAMPLED], "tracestate": [f"x=1,{marker}\x1b[31m=\n"]})
    propagator.extract({"traceparent": [f"00-{marker}"]})
    assert all(record.levelno <= 10 for record in caplog.records)
    assert marker not in caplog.text


def test_a_user_set_tracecontext_gets_the_conformant_extract() -> None:
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    upgraded = conformant(CompositePropagator([TraceContextTextMapPropagator()]))
    assert [type(p) for p in upgraded._propagators] == [W3CTraceContextPropagator]  # type: ignore[attr-defined]


# --- a real service ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LaunchedService, FaultServer]]:
    logdir: Path = tmp_path_factory.mktemp("tracecontext")
    with FaultServer() as peer:
        port = free_port()
        env = service_env(
            "http://127.0.0.1:9", "relay", DOWNSTREAM_URL=peer.url,
            OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
        )
        service = LaunchedService("relay", uvicorn_argv("tests.apps.relay:app", port), port, env, logdir)
        try:
            service.wait_ready(time.monotonic() + 60)
            yield service, peer
        finally:
            service.stop()


def relayed(service: LaunchedService, peer: FaultServer, name: str, headers: tuple[tuple[str, str], ...],
            times: int = 1) -> list[dict[str, Any]]:
    lines = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
    request = (
        f"GET /relay/ok/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Times: {times}\r\n".encode()
        + lines + b"Connection: close\r\n\r\n"
    )
    status, _, body = raw_request(service.port, request)
    assert status == 200, (body, service.log())
    seen = peer.requests_to(f"/ok/{name}")
    assert len(seen) == times
    return [r.headers for r in seen]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_service_under_the_launcher_follows_the_specification(
    relay: tuple[LaunchedService, FaultServer], case: Case
) -> None:
    service, peer = relay
    (headers,) = relayed(service, peer, case.id, case.headers)
    check(case, parse_outgoing(headers))


@pytest.mark.slow
@pytest.mark.parametrize("incoming", [VALID, f"00-{'0' * 32}-{PARENT}-01", None], ids=["valid", "invalid", "none"])
def test_several_calls_share_one_trace_and_each_has_its_own_parent(
    relay: tuple[LaunchedService, FaultServer], incoming: str | None
) -> None:
    service, peer = relay
    name = f"several-{'none' if incoming is None else incoming[3:7]}"
    outgoing = [parse_outgoing(h) for h in relayed(service, peer, name, tp(incoming) if incoming else (), times=3)]
    assert len({o.trace_id for o in outgoing}) == 1
    assert len({o.parent_id for o in outgoing}) == 3
    if incoming == VALID:
        assert outgoing[0].trace_id == TRACE
    else:
        assert outgoing[0].trace_id != "0" * 32


def test_the_sdk_context_types_are_kept() -> None:
    ctx = W3CTraceContextPropagator().extract({"traceparent": [VALID], "tracestate": ["foo=1"]})
    span_context = trace.get_current_span(ctx).get_span_context()
    assert type(span_context) is trace.SpanContext and span_context.is_remote
    assert type(span_context.trace_state) is trace.TraceState
