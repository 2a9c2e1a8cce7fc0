"""Run the README quickstart against the otel-integration installed in *this* interpreter.

    <venv>/bin/python scripts/quickstart_check.py

Starts a plain HTTP server and an OTLP receiver on 127.0.0.1, runs
``opentelemetry-instrument python examples/quickstart/app.py <server>`` from a
directory outside the checkout (so the installed package is the one imported),
then checks what a user would look at: both calls answered 200 with an
X-Request-ID, and the receiver got their CLIENT spans and the duration metric.
Exit status 0 when all holds; the reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "examples" / "quickstart" / "app.py"


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main() -> int:
    import otel_integration
    from otel_integration.devtools.receiver import OTLPReceiver

    installed = Path(otel_integration.__file__).resolve()
    if REPO in installed.parents:
        print(f"FAIL: otel_integration imported from the checkout ({installed}), not the install")
        return 1
    launcher = Path(sys.executable).with_name("opentelemetry-instrument")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    with OTLPReceiver() as receiver, tempfile.TemporaryDirectory() as cwd:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OTEL_SERVICE_NAME": "quickstart",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
        }
        done = subprocess.run(
            [str(launcher), sys.executable, str(APP), url],
            env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
        )
        lines = done.stdout.splitlines()
        print("\n".join(lines))
        if done.returncode != 0:
            print(f"FAIL: the quickstart exited {done.returncode}:\n{done.stderr[-3000:]}")
            return 1
        answered = [line.split() for line in lines if line.split()[:1] in (["sync"], ["async"])]
        if len(answered) != 2 or any(len(words) != 3 or words[1] != "200" for words in answered):
            print("FAIL: expected a sync and an async 200 carrying an X-Request-ID")
            return 1

        def client_spans() -> list[object]:
            return [s for s in receiver.spans() if s.kind == "CLIENT"]

        if not receiver.wait_for(lambda r: len(client_spans()) >= 2, timeout=30):
            print(f"FAIL: {len(client_spans())} CLIENT spans reached the receiver, expected 2")
            return 1
        if not receiver.wait_for(
            lambda r: any(p.name == "http.client.request.duration" for p in r.metrics()), timeout=30
        ):
            print("FAIL: no http.client.request.duration points reached the receiver")
            return 1
        ids = {s.attributes.get("http.request.header.x-request-id", ("",))[0] for s in client_spans()}
        if ids != {words[2] for words in answered}:
            print(f"FAIL: span request IDs {sorted(ids)} differ from the ones the app saw")
            return 1
    server.shutdown()
    print(f"OK: quickstart under opentelemetry-instrument with {installed.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
