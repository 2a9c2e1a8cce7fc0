"""Run the dms / extract / catalog pipeline: processes, fault phases, telemetry.

Used by ``demo.py`` (the terminal demo) and ``tests/test_pipeline_e2e.py``. Only the
standard library, httpx (as a plain client) and the package's receiver/trace view:
the distro reaches the services through ``opentelemetry-instrument``; the one
line that imports ``otel_integration`` is catalog's opt-in ``validate()``.

    with Pipeline(workdir) as pipe:          # receiver + 3 services, or an external endpoint
        results = pipe.run_phases()
    pipe.receiver.spans()                    # everything, flushed when the services stopped

Every service runs in its own session (process group) and is stopped with
``killpg``: on normal exit, on Ctrl-C / SIGTERM (the caller raises KeyboardInterrupt),
from ``atexit``, and, on Linux, when this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
SERVICES = ("extract", "catalog", "dms")  # start order does not matter; all are started at once
REQUEST_ID = "X-Request-ID"
HEADER_ATTRIBUTE = "http.request.header.x-request-id"
# Client spans (httpx) keep the header's dashes; the ASGI server instrumentation turns them
# into underscores. Both are request-ID attributes.
REQUEST_ID_ATTRIBUTES = (
    HEADER_ATTRIBUTE,
    "http.request.header.x_request_id",
    "http.response.header.x-request-id",
    "http.response.header.x_request_id",
)

# Every process group we started and have not reaped yet; atexit kills what is left.
_live_groups: set[int] = set()


def _kill_leftovers() -> None:
    for pgid in list(_live_groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _live_groups.discard(pgid)


atexit.register(_kill_leftovers)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def instrument_command() -> str:
    """``opentelemetry-instrument`` next to this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).parent / "opentelemetry-instrument"
    if beside.exists():
        return str(beside)
    found = shutil.which("opentelemetry-instrument")
    if found is None:
        raise RuntimeError("opentelemetry-instrument not found: pip install otel-integration")
    return found


def _load_libc() -> Any:
    """libc for prctl, loaded here and not in the child: after a fork, with the receiver's
    threads running, an import or a dlopen could wait forever on a lock one of them held."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except Exception:  # noqa: BLE001 - no prctl: atexit and killpg still apply
        return None


_LIBC = _load_libc()


def _die_with_parent() -> None:  # runs in the child between fork and exec: nothing imported or loaded here
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: our death stops the service too


@dataclass
class Service:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Result:
    """One document sent to dms."""

    phase: str
    request_id: str | None  # the ID we sent, else the one dms answered with
    sent_request_id: str | None
    status: int
    elapsed_ms: float
    body: dict[str, Any]
    response_request_id: str | None


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    fault: dict[str, Any]
    documents: int
    # Before sending: wait until dms's breaker for extract reads half-open (the
    # open window elapsed), polled on dms's health endpoint with a deadline.
    until_half_open: bool = False


@dataclass
class Pipeline:
    workdir: Path
    breaker_open_seconds: float = 2.0
    endpoint: str | None = None  # external OTLP/HTTP endpoint; None: embedded receiver
    extra_env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 30.0

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.receiver = None
        self.run_id = secrets.token_hex(2)
        self.services = {
            name: Service(name, free_port(), self.workdir / f"{name}.log") for name in SERVICES
        }
        self.results: list[Result] = []
        self.health: dict[str, Any] | None = None
        self._http = httpx.Client(timeout=10.0)

    # --- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> "Pipeline":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.endpoint is None:
            from otel_integration.devtools.receiver import OTLPReceiver

            self.receiver = OTLPReceiver("127.0.0.1", 0).start()
            self.endpoint = self.receiver.endpoint
        command = instrument_command()
        for service in self.services.values():
            log = open(service.log_path, "wb")
            try:
                service.process = subprocess.Popen(
                    [command, sys.executable, "-m", "uvicorn", f"{service.name}:app",
                     "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(service.port),
                     "--no-access-log"],
                    env=self.environment(service.name),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: killpg reaches the lot
                    preexec_fn=_die_with_parent if _LIBC is not None else None,
                )
            finally:
                log.close()
            _live_groups.add(service.process.pid)
        self.wait_ready()

    def environment(self, name: str) -> dict[str, str]:
        s = self.services
        env = dict(os.environ)
        env.update({
            "OTEL_SERVICE_NAME": name,
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint or "",
            # Export promptly: the demo is short and reads what arrived.
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "livez,admin",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "x-request-id",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE": "x-request-id",
            # The distro: logical names (peer.service), fast retries, a short breaker.
            "OTEL_INTEGRATION_SERVICES": ",".join(f"{n}={s[n].url}" for n in SERVICES if n != name),
            "OTEL_INTEGRATION_RETRY_INITIAL_WAIT": "0.05",
            "OTEL_INTEGRATION_RETRY_JITTER": "0.05",
            "OTEL_INTEGRATION_RETRY_MAX_WAIT": "0.5",
            "OTEL_INTEGRATION_BREAKER_THRESHOLD": "5",
            "OTEL_INTEGRATION_BREAKER_OPEN_SECONDS": str(self.breaker_open_seconds),
            "OTEL_INTEGRATION_HEALTH_PATH": "/healthz",
            # The services' own configuration: where their downstreams are.
            "EXTRACT_URL": s["extract"].url,
            "CATALOG_URL": s["catalog"].url,
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = dict(self.services)
        while pending:
            for name, service in list(pending.items()):
                assert service.process is not None
                if service.process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {service.process.returncode} while starting:\n"
                        + service.log_text()[-3000:]
                    )
                try:
                    if self._http.get(service.url + "/livez", timeout=0.5).status_code == 200:
                        del pending[name]
                except httpx.TransportError:
                    pass
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {self.startup_timeout:.0f}s: {', '.join(pending)}")
            if pending:
                time.sleep(0.1)

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM every service group (they flush telemetry on the way out), then SIGKILL."""
        running = [s for s in self.services.values() if s.process is not None]
        for service in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for service in running:
            try:
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=2)
            _live_groups.discard(service.process.pid)
        self._http.close()

    def close_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()

    # --- traffic -------------------------------------------------------------------

    def set_fault(self, **spec: Any) -> dict:
        response = self._http.post(self.services["extract"].url + "/admin/fault", json=spec)
        response.raise_for_status()
        return response.json()

    def send(self, phase: str, n: int, *, request_id: str | None) -> Result:
        headers = {REQUEST_ID: request_id} if request_id else {}
        document = {
            "doc_id": f"{phase}-{n}-{self.run_id}",
            "name": f"invoice-{phase}-{n}.pdf",
            "content": "Quarterly invoice for consulting services. Customer Northwind "
                       "Traders, settlement via transfer, reference purchase-order 4711.",
        }
        started = time.perf_counter()
        response = self._http.post(self.services["dms"].url + "/documents",
                                   json=document, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        echoed = response.headers.get(REQUEST_ID)
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text[:200]}
        result = Result(phase, request_id or echoed, request_id, response.status_code,
                        elapsed, body, echoed)
        self.results.append(result)
        return result

    def phases(self) -> list[Phase]:
        return [
            Phase("healthy", "extract is fine: every call succeeds at the first attempt",
                  {"mode": "ok"}, 2),
            Phase("flaky", "extract answers 503 in bursts of two: retries absorb them",
                  {"mode": "flaky", "fail": 2, "ok": 1}, 2),
            Phase("down", "extract answers 503 to everything: retries give up, the breaker "
                  "opens, dms fails fast with 503 naming extract",
                  {"mode": "down"}, 4),
            Phase("recovered", f"extract is back; after {self.breaker_open_seconds:g}s the "
                  "breaker lets a trial call through (half-open) and closes",
                  {"mode": "ok"}, 2, until_half_open=True),
            Phase("drift", "extract's schema analysis changes shape: catalog's validate() names "
                  "each wrong field, counts it, and registers the document without the schema",
                  {"mode": "ok", "schema": "drift"}, 1),
        ]

    def run_phases(self, on_result: Any = None, on_phase: Any = None,
                   on_health: Any = None) -> list[Result]:
        for phase in self.phases():
            if on_phase:
                on_phase(phase)
            self.set_fault(**phase.fault)
            if phase.until_half_open:
                self.wait_half_open()
            for n in range(1, phase.documents + 1):
                # One request leaves the ID to dms, to show that it makes one up and echoes it.
                request_id = None if (phase.name, n) == ("healthy", 2) else \
                    f"{phase.name}-{n}-{self.run_id}"
                result = self.send(phase.name, n, request_id=request_id)
                if on_result:
                    on_result(result)
            if phase.name == "down":
                self.health = self.dependency_health()
                if on_health:
                    on_health(self.health)
        self.settle_metrics()
        return self.results

    def wait_half_open(self) -> None:
        """Poll dms's health endpoint until its breaker for extract is half-open."""
        deadline = time.monotonic() + self.breaker_open_seconds + 30
        while time.monotonic() < deadline:
            health = self.dependency_health()
            extract = ((health or {}).get("body") or {}).get("dependencies", {}).get("extract", {})
            if extract.get("breaker") == "half_open":
                return
            time.sleep(0.1)
        raise RuntimeError(f"dms's breaker for extract not half-open {self.breaker_open_seconds + 30:g}s later")

    def settle_metrics(self, timeout: float = 30.0) -> None:
        """Wait for one metrics export per service that postdates the traffic.

        The last state changes (the breaker closing) must reach the backend before the
        services stop: a periodic export is the reliable way; the SDK's export at exit
        may be cut short.
        """
        after = time.time_ns()
        if self.receiver is None:
            time.sleep(1.2)  # OTEL_METRIC_EXPORT_INTERVAL is 1 s
            return

        def exported(rx: Any) -> bool:
            fresh = {p.service_name for p in rx.metrics() if p.time_ns > after}
            return set(self.services) <= fresh

        self.receiver.wait_for(exported, timeout=timeout)

    def dependency_health(self) -> dict[str, Any] | None:
        """dms's dependency health endpoint (the distro's), while extract is down."""
        try:
            response = self._http.get(self.services["dms"].url + "/healthz", timeout=2)
        except httpx.HTTPError:
            return None
        if response.status_code == 404:
            return None
        try:
            return {"status": response.status_code, "body": response.json()}
        except ValueError:
            return {"status": response.status_code, "body": response.text[:200]}

    # --- telemetry -------------------------------------------------------------------

    def wait_for_telemetry(self, timeout: float = 30.0) -> None:
        """After stop(): wait until every result's trace has arrived and exports settled."""
        if self.receiver is None:
            return
        wanted = {r.request_id for r in self.results if r.request_id}

        def arrived(rx: Any) -> bool:
            return wanted <= {rid for s in rx.spans() for rid in request_ids(s)}

        self.receiver.wait_for(arrived, timeout=timeout)
        # Then wait for quiet: the last batches (metrics at shutdown) may still be in flight.
        last, quiet_since = -1, time.monotonic()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            count = len(self.receiver.requests())
            if count != last:
                last, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since > 0.5:
                break
            time.sleep(0.05)


def request_ids(span: Any) -> set[str]:
    """The X-Request-ID values a span carries (captured headers are string arrays)."""
    found: set[str] = set()
    for key in REQUEST_ID_ATTRIBUTES:
        value = span.attributes.get(key)
        if isinstance(value, (tuple, list)):
            found.update(str(v) for v in value)
        elif value:
            found.add(str(value))
    return found


def trace_for(spans: list[Any], request_id: str) -> list[Any]:
    """Every span of the trace whose dms SERVER span (or any span) carries request_id."""
    candidates = [s for s in spans if request_id in request_ids(s)]
    roots = [s for s in candidates if s.service_name == "dms" and s.kind == "SERVER"]
    chosen = (roots or candidates)
    if not chosen:
        return []
    trace_id = chosen[0].trace_id
    return [s for s in spans if s.trace_id == trace_id]


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        # A zombie still answers kill(0); treat it as gone.
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except (FileNotFoundError, IndexError):
            if not Path("/proc").exists():
                alive.append(pid)
            continue
        alive.append(pid)
    return alive
