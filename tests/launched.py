"""Services as users run them: a real server process under ``opentelemetry-instrument``.

`LaunchedService` starts ``opentelemetry-instrument <argv>`` on a free port of
127.0.0.1 with a clean environment (no ``OTEL_*`` of the test run), waits until
the port accepts connections, keeps stdout+stderr in a file, and stops the
process with SIGTERM. `raw_request` talks HTTP/1.1 over a socket, for requests
no client library would send.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launcher() -> str:
    sibling = Path(sys.executable).parent / "opentelemetry-instrument"
    if sibling.exists():
        return str(sibling)
    from tests.peers import require_binary

    return require_binary("opentelemetry-instrument")


def service_env(endpoint: str, service_name: str, **extra: str) -> dict[str, str]:
    """The environment of a launched service exporting to `endpoint` quickly (200 ms batches)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST"))}
    env.update(
        PYTHONPATH=str(ROOT),
        OTEL_SERVICE_NAME=service_name,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_BLRP_SCHEDULE_DELAY="200",
        OTEL_METRIC_EXPORT_INTERVAL="500",
    )
    env.update(extra)
    return env


def uvicorn_argv(app: str, port: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), *options]


class LaunchedService:
    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str], logdir: Path) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [launcher(), *argv], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, deadline: float) -> None:
        """Until the port accepts connections; fail at `deadline` (monotonic) or if the process exits."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited:\n{self.log()}", pytrace=False)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"{self.name} did not start:\n{self.log()}", pytrace=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def raw_request(port: int, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as it is; (status, headers lowercased, body). Status 0: the server closed without answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body
