"""Real peers for the tests: an HTTP server on 127.0.0.1 that injects faults.

Paths (all answer JSON with the request headers they saw, unless said):
- ``/ok``                               200
- ``/status/<code>``                    always <code>; ``?retry_after=<v>`` adds Retry-After
- ``/flaky/<key>?fail=N&status=503``    first N requests for <key> fail with status, then 200
- ``/slow?delay=<s>``                   sleeps, then 200
- ``/hold/<key>?status=200``            held until the test calls `FaultServer.release(key)`, then status
- ``/reset``                            closes the connection without answering
- ``/reset-once/<key>``                 closes the first time for <key>, then 200
- ``/cache/<key>?cc=<Cache-Control>&date_ago=<s>&fail_after=N&status=503``
                                        200 with that Cache-Control (none if absent) and a Date
                                        <s> seconds ago, its body ``{"key", "served"}`` (the count);
                                        after N requests for <key>: status (``reset``: closes)

Every request is recorded in `FaultServer.requests` (method, path, headers).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


def require_binary(name: str, hint: str = "") -> str:
    """The path of a system binary; skip on a laptop without it, fail in CI (env var CI set)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed" + (f" ({hint})" if hint else "")
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run this test", pytrace=False)
        pytest.skip(message)
    return path


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `predicate` until it is true; fail after `timeout` seconds.

    The timeout is generous on purpose: it only bounds a hung test, and a
    busy CI machine must never make a correct test fail.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} not met within {timeout} s", pytrace=False)
        time.sleep(0.02)


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    at: float  # monotonic
    wall: float = 0.0  # time.time(): for HTTP dates


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        elif self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.server.lock:
            self.server.requests.append(SeenRequest(self.command, url.path, headers, time.monotonic(), time.time()))
        parts = url.path.strip("/").split("/")
        status, extra = 200, {}
        if parts[0] == "status":
            status = int(parts[1])
            if "retry_after" in query:
                extra["Retry-After"] = query["retry_after"]
        elif parts[0] == "flaky":
            with self.server.lock:
                self.server.counts[parts[1]] += 1
                seen = self.server.counts[parts[1]]
            if seen <= int(query.get("fail", "1")):
                status = int(query.get("status", "503"))
                if "retry_after" in query:
                    extra["Retry-After"] = query["retry_after"]
        elif parts[0] == "slow":
            time.sleep(float(query.get("delay", "1")))
        elif parts[0] == "hold":
            # Bounded only so that a failed test cannot hang the server's thread forever.
            self.server.hold(parts[1]).wait(timeout=120)
            status = int(query.get("status", "200"))
        elif parts[0] == "reset":
            self._reset()
            return
        elif parts[0] == "cache":
            self._cache(parts[1], query)
            return
        elif parts[0] == "reset-once":
            with self.server.lock:
                self.server.counts[parts[1]] += 1
                first = self.server.counts[parts[1]] == 1
            if first:
                self._reset()
                return
        body = json.dumps({"path": url.path, "headers": headers}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _cache(self, key: str, query: dict[str, str]) -> None:
        with self.server.lock:
            self.server.counts["cache:" + key] += 1
            served = self.server.counts["cache:" + key]
        if "fail_after" in query and served > int(query["fail_after"]):
            if query.get("status") == "reset":
                self._reset()
                return
            status = int(query.get("status", "503"))
            body = b'{"error": "down"}'
        else:
            status = 200
            body = json.dumps({"key": key, "served": served}).encode()
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string(time.time() - float(query.get("date_ago", "0"))))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if "cc" in query:
            self.send_header("Cache-Control", query["cc"])
        if "vary" in query:
            self.send_header("Vary", query["vary"])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reset(self) -> None:
        # SO_LINGER 0: the client sees a reset, not a clean close.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[SeenRequest] = []
        self.counts: Counter[str] = Counter()
        self.holds: dict[str, threading.Event] = {}

    def hold(self, key: str) -> threading.Event:
        with self.lock:
            return self.holds.setdefault(key, threading.Event())


class FaultServer:
    def __init__(self) -> None:
        self._server = _Server()
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._server.lock:
            held = list(self._server.holds.values())
        for event in held:
            event.set()
        self._server.shutdown()
        self._server.server_close()

    def release(self, key: str) -> None:
        """Let every request to ``/hold/<key>`` (held now or later) answer."""
        self._server.hold(key).set()

    @property
    def requests(self) -> list[SeenRequest]:
        with self._server.lock:
            return list(self._server.requests)

    def requests_to(self, path: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.path == path]

    def request_ids(self, path: str) -> list[str | None]:
        """The X-Request-ID of each request to `path`, in arrival order."""
        return [r.headers.get("x-request-id") for r in self.requests_to(path)]

    def gaps(self, path: str) -> list[float]:
        """Seconds between consecutive requests to `path` (the waits between attempts)."""
        times = [r.at for r in self.requests_to(path)]
        return [b - a for a, b in zip(times, times[1:])]


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuickHandler(_Handler):
    # TCP_NODELAY: the status line + headers and the body are two writes; with
    # Nagle's algorithm and the client's delayed ACK every response costs ~40 ms.
    disable_nagle_algorithm = True


class QuickFaultServer(FaultServer):
    """A `FaultServer` for test files with many short tests.

    Same endpoints, same behaviour, but ~40 ms faster per request (TCP_NODELAY,
    see `_QuickHandler`) and it stops in milliseconds (`serve_forever` polls for
    shutdown every 0.5 s by default, so each `FaultServer.__exit__` costs up to
    half a second).
    """

    def __init__(self, poll_interval: float = 0.02) -> None:
        super().__init__()
        self._server.RequestHandlerClass = _QuickHandler
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
        )
