"""No header can make a service answer 500 or write a forged line, a control character, into
its logs or its spans: raw bytes over a socket to a Starlette app (uvicorn) and a Flask app
(the Flask development server), both under ``opentelemetry-instrument``, exporting to a real
OTLP receiver.

The fixed cases are those that failed before: the upstream ASGI instrumentation decoded a
non-UTF-8 header with ``unicode_escape``, which raised on ``\\xff\\x`` (a 500) and turned the
text ``\\r\\n`` into a real line break (a ``FORGED-TS`` line in stderr, in an OTLP log body
and in ``user_agent.original``). The fuzz then sends what hypothesis makes of those pieces.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_integration.devtools.receiver import OTLPReceiver
from tests.launched import LaunchedService, free_port, raw_request, service_env, uvicorn_argv
from tests.peers import FaultServer, wait_until

pytestmark = pytest.mark.slow

TELEMETRY_HEADERS = ("traceparent", "tracestate", "baggage", "user-agent", "x-request-id")
EXTRA_FUZZED_HEADERS = ("authorization", "x-correlation-id", "cookie")
MAX_FUZZED_HEADERS = 4
FUZZ_EXAMPLES = 120  # per framework
FORGED = b"FORGED-TS"
# A control character as text, once decoded: what must never appear in a log line or an attribute.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# The Flask development server colours its own request lines (it never logs a header).
_WERKZEUG_STYLE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Target:
    name: str
    service: LaunchedService
    receiver: OTLPReceiver
    serving_since_ns: int  # after the server's start-up lines (a banner may hold line breaks)


def _start(name: str, argv: list[str], port: int, receiver: OTLPReceiver, peer: FaultServer,
           logdir: Path) -> LaunchedService:
    env = service_env(receiver.endpoint, name, DOWNSTREAM_URL=peer.url)
    service = LaunchedService(name, argv, port, env, logdir)
    service.wait_ready(time.monotonic() + 60)
    return service


@pytest.fixture(scope="module", params=["starlette", "flask"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    logdir = tmp_path_factory.mktemp(f"hostile-{request.param}")
    port = free_port()
    if request.param == "starlette":
        argv = uvicorn_argv("tests.apps.relay:app", port)
    else:
        argv = [sys.executable, "-m", "flask", "--app", "tests.apps.relay_flask", "run",
                "--host", "127.0.0.1", "--port", str(port)]
    with OTLPReceiver() as receiver, FaultServer() as peer:
        service = _start(request.param, argv, port, receiver, peer, logdir)
        try:
            assert raw_request(port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
            yield Target(request.param, service, receiver, time.time_ns())
        finally:
            service.stop()


def send(target: Target, header_lines: bytes, path: bytes = b"/hello") -> int:
    request = b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header_lines + b"Connection: close\r\n\r\n"
    status, _, body = raw_request(target.service.port, request)
    # 400: the HTTP server refused the request before any app code or instrumentation ran.
    assert status in (200, 400, 404), (status, body[:200], target.service.log()[-2000:])
    return status


def control_characters_in_telemetry(target: Target) -> list[str]:
    found = []
    for span in target.receiver.spans():
        values: list[tuple[str, Any]] = [("name", span.name), ("status", span.status_message)]
        values += list(span.attributes.items())
        values += [(k, v) for _, attributes in span.events for k, v in attributes.items() if k != "exception.stacktrace"]
        for key, value in values:
            for text in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(text, str) and _CONTROL.search(text):
                    found.append(f"span {span.name!r} {key}={text!r}")
    for record in target.receiver.logs():
        if record.time_ns < target.serving_since_ns:
            continue
        body = _WERKZEUG_STYLE.sub("", record.body) if record.scope_name == "werkzeug" else record.body
        if _CONTROL.search(body):
            found.append(f"log body {record.body!r}")
        for key, value in record.attributes.items():
            if key != "exception.stacktrace" and isinstance(value, str) and _CONTROL.search(value):
                found.append(f"log attribute {key}={value!r}")
    return found


def forged_lines(target: Target) -> list[str]:
    text = target.service.log_path.read_bytes().decode("utf-8", "replace")
    bad = [line for line in text.split("\n") if line.lstrip("\r").startswith(FORGED.decode())]
    for line in text.replace("\r\n", "\n").split("\n"):
        if "[werkzeug]" in line:
            line = _WERKZEUG_STYLE.sub("", line)
        if _CONTROL.search(line):
            bad.append(repr(line))
    return bad


def quiet(target: Target) -> None:
    """Wait until the telemetry of the requests sent so far has been exported."""
    before = -1
    while True:
        time.sleep(0.5)
        now = len(target.receiver.spans()) + len(target.receiver.logs())
        if now == before:
            return
        before = now


@pytest.mark.parametrize("header", TELEMETRY_HEADERS)
@pytest.mark.parametrize(
    "value",
    [b"\xff\\x", b"ok\xff\\r\\nFORGED-TS: 1", b"\xff\\x1b[31mred\\x00", b"\\u2028\xfe\\N{bad}"],
    ids=["bad-escape", "escaped-crlf", "escaped-esc-nul", "escaped-unicode"],
)
def test_non_utf8_escapes_in_a_header_never_give_a_500_or_a_forged_line(target: Target, header: str,
                                                                          value: bytes) -> None:
    assert send(target, header.encode() + b": " + value + b"\r\n") == 200
    wait_until(lambda: target.receiver.spans(), what="spans")


@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(TELEMETRY_HEADERS + EXTRA_FUZZED_HEADERS),
            st.lists(
                st.one_of(
                    st.sampled_from([b"\\r\\n", b"\\x", b"\\x1b[2J", b"\\x00", b"\xff", b"\xc3", b"FORGED-TS: ",
                                     b"%0d%0a", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                     b"foo=1,", b"k=v;p", b"\\u2028", b"\\N{", b"\t", b"\x7f", b"\x1b"]),
                    st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                ),
                max_size=6,
            ).map(b"".join),
        ),
        min_size=1,
        max_size=MAX_FUZZED_HEADERS,
    ),
    path=st.sampled_from([b"/hello", b"/hello?q=%0d%0aFORGED-TS", b"/%0d%0aFORGED-TS%1b", b"/hello?a=\xff\\x"]),
)
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
def test_fuzzed_headers_never_give_a_500(target: Target, lines: list[tuple[str, bytes]], path: bytes) -> None:
    send(target, b"".join(name.encode() + b": " + value + b"\r\n" for name, value in lines), path)


def test_after_all_of_it_no_forged_line_and_no_control_character_anywhere(target: Target) -> None:
    """Runs last in the module for each framework: everything the cases above wrote, checked."""
    send(target, b"User-Agent: last\xff\\r\\nFORGED-TS: x\r\n")
    # Spans are exported in the order they end: once this one is in, all earlier ones are.
    wait_until(lambda: any(str(s.attributes.get("user_agent.original", "")).startswith("last")
                           for s in target.receiver.spans()), what="the last request's SERVER span")
    quiet(target)
    assert not forged_lines(target), forged_lines(target)[:5]
    assert not control_characters_in_telemetry(target), control_characters_in_telemetry(target)[:5]
