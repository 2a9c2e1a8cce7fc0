"""A throwaway redis-server for tests.

`RedisPeer` starts ``redis-server`` on a free 127.0.0.1 port with no
persistence (``--save '' --appendonly no``), waits until it answers PING and
stops it.  `require_redis_server` skips a test when ``redis-server`` is not
installed, except in CI (env var ``CI`` set), where a missing server fails.
`RedisProxy` stands between a client and the server: slow, or paused.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time


from tests.peers import require_binary

REDIS_SERVER = "redis-server"


def require_redis_server() -> str:
    return require_binary(REDIS_SERVER, "apt-get install redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(port: int, timeout: float = 0.2) -> bool:
    """True once the server answers (a NOAUTH error counts: it is up)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
            return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
    except OSError:
        return False


class RedisPeer:
    """One redis-server process; `start` / `stop` may be called again (same port)."""

    def __init__(self, port: int | None = None, executable: str | None = None, password: str | None = None) -> None:
        self.executable = executable or require_redis_server()
        self.password = password
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="redis-peer-")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisPeer:
        for attempt in range(3):
            self.process = subprocess.Popen(
                [
                    self.executable,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", self._dir,
                    "--daemonize", "no",
                    "--loglevel", "warning",
                    *(["--requirepass", self.password] if self.password else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break  # exited: port taken, most likely
                if ping(self.port):
                    return self
                time.sleep(0.02)
            err = self._reap()
            if attempt < 2:
                self.port = free_port()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}: {err!r}")

    def _reap(self) -> bytes:
        process, self.process = self.process, None
        if process is None:
            return b""
        if process.poll() is None:
            process.kill()
        try:
            _, err = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            err = b""
        return err or b""

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``: a crash, no goodbye)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill() if kill else process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def __enter__(self) -> RedisPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class RedisProxy:
    """A TCP proxy on 127.0.0.1 in front of a redis-server: slow (``delay`` per chunk) or paused.

    `pause` holds every byte in both directions (the connections stay open: a
    Redis that accepts and never answers); `resume` lets them through.
    `received` counts the complete Redis commands clients sent to the proxy
    (forwarded or not), `forwarded` those it passed on: a pipeline of three
    commands counts three.
    """

    def __init__(self, upstream_port: int, delay: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.received = 0
        self.forwarded = 0
        self._thread = threading.Thread(target=self._accept, name="redis-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def __enter__(self) -> RedisProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._open.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below (close alone does not)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            for source, target, commands in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, target, commands), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, commands: bool) -> None:
        parser = _CommandCounter()
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                count = parser.feed(chunk) if commands else 0
                with self._lock:
                    self.received += count
                self._open.wait()  # paused: held here, connection open
                if self._closed:
                    break
                if self.delay:
                    time.sleep(self.delay)  # the slow network this proxy stands for
                target.sendall(chunk)
                with self._lock:
                    self.forwarded += count
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _CommandCounter:
    """Counts complete commands in a client's RESP stream (arrays of bulk strings, or inline)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> int:
        self._buffer += data
        count, position = 0, 0
        while True:
            end = self._command_end(position)
            if end is None:
                break
            count, position = count + 1, end
        del self._buffer[:position]
        return count

    def _command_end(self, start: int) -> int | None:
        buffer = self._buffer
        line_end = buffer.find(b"\r\n", start)
        if line_end < 0:
            return None
        if buffer[start : start + 1] != b"*":
            return line_end + 2  # an inline command
        items = int(buffer[start + 1 : line_end])
        position = line_end + 2
        for _ in range(items):
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            length = int(buffer[position + 1 : line_end])  # "$<length>"
            position = line_end + 2 + length + 2
            if position > len(buffer):
                return None
        return position
