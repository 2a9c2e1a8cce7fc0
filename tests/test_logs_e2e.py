"""Log lines a service writes carry the request ID, whatever the app's logging set-up; records go over OTLP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from otel_integration.devtools.receiver import OTLPReceiver
from tests.peers import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = str(Path(sys.executable).parent / "opentelemetry-instrument")


def test_basic_config_access_log_and_500_traceback_show_the_request_id(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "service.log"
    with OTLPReceiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST"))}
        env.update(PYTHONPATH=str(ROOT), OTEL_SERVICE_NAME="plain-logging", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                   OTEL_BLRP_SCHEDULE_DELAY="200")
        process = subprocess.Popen(
            [LAUNCHER, sys.executable, "-m", "uvicorn", "tests.apps.plain_logging:app", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )
        try:
            def up() -> bool:
                assert process.poll() is None, log.read_text()
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/hello", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(up, timeout=60, what="the service")
            assert httpx.get(f"http://127.0.0.1:{port}/hello", headers={"X-Request-ID": "logs-1"}).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/crash", headers={"X-Request-ID": "logs-500"}).status_code == 500

            def lines() -> list[str]:
                return log.read_text(errors="replace").splitlines()

            wait_until(lambda: any("unhandled in the app" in line for line in lines()), what="the 500's traceback")
            text = "\n".join(lines())
            app_line = next(line for line in lines() if "hello handled" in line and "logs-1" in line)
            assert "request_id=logs-1" in app_line  # basicConfig(level=INFO) gave no format: ours
            access = [line for line in lines() if '"GET /hello HTTP/1.1" 200' in line and "logs-1" in line]
            assert access and "request_id=logs-1" in access[0], text  # uvicorn's access log
            errors = [i for i, line in enumerate(lines()) if line.endswith("RuntimeError: unhandled in the app")]
            assert errors, text
            assert lines()[errors[0] + 1].strip() == "request_id=logs-500", text  # the traceback's note (3.11+)
            assert receiver.wait_for(
                lambda rx: any(r.body == "hello handled" and r.attributes.get("request_id") == "logs-1" and r.trace_id
                               for r in rx.logs())
            ), [r.body for r in receiver.logs()]  # over OTLP by default, with the IDs
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
