"""A throwaway redis-server for tests.

`RedisPeer` starts ``redis-server`` on a free 127.0.0.1 port with no
persistence (``--save '' --appendonly no``), waits until it answers PING and
stops it.  `require_redis_server` skips a test when ``redis-server`` is not
installed, except in CI (env var ``CI`` set), where a missing server fails.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
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
