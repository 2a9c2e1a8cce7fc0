"""Alert rules (collector/prometheus/alerts.yml): valid, tested, and using only
metric names the distro really emits.

promtool-based tests skip on a laptop without promtool, but fail when the `CI`
environment variable is set (CI installs Debian's `prometheus` package).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import peers
import yaml

from otel_integration import _telemetry as telemetry

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "collector" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"


def require_binary(name: str) -> str:
    return peers.require_binary(name, "install Debian's prometheus package")


# --- metric names ----------------------------------------------------------------

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def expected_metric_names() -> set[str]:
    """Every Prometheus series name the distro produces, from telemetry.py."""
    names: set[str] = set()
    for spec in (*telemetry.INSTRUMENTS, *telemetry.UPSTREAM_INSTRUMENTS):
        base = telemetry.prometheus_name(spec)
        if spec.kind == "histogram":
            names.update(base + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(base)
    return names


PROMQL_KEYWORDS = {
    # aggregation modifiers, vector matching, binary/set operators, modifiers
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "atmodifier", "start", "end",
    # aggregation operators (also caught by "followed by (" but may precede `by`)
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "group", "limitk", "limit_ratio",
    # literals
    "inf", "nan",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression.

    Strings, label matchers, ranges and label lists (`by (...)`) are removed;
    what remains are identifiers, which are metric names unless they are
    followed by `(` (functions, aggregations) or are PromQL keywords. Numbers
    and durations never start with a letter, so they are not identifiers.
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def test_promql_metric_names_parser():
    expr = """
      sum by (job, le) (rate(foo_seconds_bucket{job=~"$job", error_type!="x"}[5m]))
      / on (job) group_left (instance) max without (x) (bar_total[1m:30s] offset 5m)
      > bool 1 and baz or vector(0) unless histogram_quantile(0.9, qux_bucket) == Inf
    """
    assert promql_metric_names(expr) == {"foo_seconds_bucket", "bar_total", "baz", "qux_bucket"}
    assert promql_metric_names('{__name__="x"}') == set()


def test_expected_metric_names_come_from_telemetry():
    names = expected_metric_names()
    assert "http_client_request_duration_seconds_bucket" in names
    assert "http_client_circuit_breaker_state" in names
    assert "http_client_retries_total" in names
    assert len(names) == len(telemetry.INSTRUMENTS) + 3 * len(telemetry.UPSTREAM_INSTRUMENTS)


# --- the rules ---------------------------------------------------------------------


def load_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict]:
    return [rule for rule in load_rules() if "alert" in rule]


def test_every_metric_in_alert_rules_is_emitted_by_the_distro():
    expected = expected_metric_names()
    for rule in load_rules():
        used = promql_metric_names(rule["expr"])
        assert used, f"{rule.get('alert') or rule.get('record')}: no metric found in expr"
        unknown = used - expected
        assert not unknown, f"{rule.get('alert') or rule.get('record')} uses unknown metrics {unknown}"


REQUIRED_SIGNALS = {
    # metric an alert must be built on -> what it is about
    "http_client_circuit_breaker_state": "circuit breaker open",
    "http_client_request_duration_seconds_count": "client error rate",
    "http_client_request_duration_seconds_bucket": "p95 latency",
    "http_client_retry_budget_exhausted_total": "retry budget exhausted",
    "http_client_dependency_health": "dependency health check failing",
}


def test_required_alerts_exist():
    used = set()
    for rule in alert_rules():
        used |= promql_metric_names(rule["expr"])
    missing = {what for metric, what in REQUIRED_SIGNALS.items() if metric not in used}
    assert not missing, f"no alert for: {sorted(missing)}"


def test_alerts_have_for_severity_annotations_and_runbook():
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no `for:`"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name}: no summary"
        assert annotations.get("description"), f"{name}: no description"
        assert annotations.get("runbook_url") == f"docs/runbooks/{name}.md", name
        assert (ROOT / annotations["runbook_url"]).is_file(), f"{name}: runbook missing"


def test_runbooks_have_the_expected_sections():
    for rule in alert_rules():
        text = (RUNBOOKS / f"{rule['alert']}.md").read_text().lower()
        for section in ("what it means", "likely causes", "check first", "mitigat"):
            assert section in text, f"runbook {rule['alert']}: no '{section}' section"


def test_runbooks_name_only_error_types_that_exist():
    """An error.type a runbook tells the reader to look for is one spans and metrics carry."""
    import httpx

    from otel_integration import errors

    named = set()
    for path in RUNBOOKS.glob("*.md"):
        for name in re.findall(r"`(?:httpx\.)?([A-Z][A-Za-z]*(?:Error|Timeout))`", path.read_text()):
            named.add(name)
            assert hasattr(errors, name) or hasattr(httpx, name), f"{path.name}: `{name}` is no error type"
    breaker = (RUNBOOKS / "HttpClientCircuitBreakerOpen.md").read_text()
    assert "`CircuitOpenError`" in breaker and {"ConnectError", "ReadTimeout"} <= named


def test_observability_doc_describes_every_alert():
    text = OBSERVABILITY_DOC.read_text()
    for rule in alert_rules():
        assert rule["alert"] in text, f"docs/observability.md does not mention {rule['alert']}"


def test_unit_tests_cover_every_alert_firing_and_not_firing():
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    firing, quiet = set(), set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), f"never tested firing: {names - firing}"
    assert names - quiet == set(), f"never tested not firing: {names - quiet}"


# --- promtool ----------------------------------------------------------------------


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_promtool_check_rules():
    run_promtool("check", "rules", ALERTS.name)


def test_promtool_test_rules():
    result = run_promtool("test", "rules", ALERTS_TEST.name)
    assert "SUCCESS" in result.stdout


# --- end to end: a real Prometheus server evaluates the rules ------------------------
#
# The distro's real instruments (otel_integration._telemetry.Instruments) record
# a failing downstream and a healthy one; a tiny HTTP server renders them the
# way the collector's `prometheus` exporter does (prometheus_name(), attribute
# dots -> underscores, service.name -> job, service.instance.id -> instance);
# a real `prometheus` scrapes it every second and evaluates alerts.yml. Only the
# `for:` durations are set to 0 so the test takes seconds, not minutes; the
# expressions are the committed ones.

FAILING = {"server.address": "payments.internal", "server.port": 443, "peer.service": "payments"}
HEALTHY = {"server.address": "inventory.internal", "server.port": 8080}


def _label_value(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(attributes: dict, resource: dict, extra: dict | None = None) -> str:
    labels = {"job": resource["service.name"], "instance": resource["service.instance.id"]}
    labels.update({k.replace(".", "_"): v for k, v in attributes.items()})
    labels.update(extra or {})
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items())) + "}"


def render_exposition(metrics_data) -> str:
    """Prometheus text format, named the way the collector's exporter names it."""
    specs = {s.name: s for s in (*telemetry.INSTRUMENTS, *telemetry.UPSTREAM_INSTRUMENTS)}
    lines = []
    for rm in metrics_data.resource_metrics:
        resource = dict(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                spec = specs[metric.name]
                name = telemetry.prometheus_name(spec)
                kind = {"counter": "counter", "gauge": "gauge", "histogram": "histogram"}[spec.kind]
                lines.append(f"# TYPE {name} {kind}")
                for point in metric.data.data_points:
                    attrs = dict(point.attributes)
                    if spec.kind != "histogram":
                        lines.append(f"{name}{_labels(attrs, resource)} {point.value}")
                        continue
                    cumulative = 0
                    for bound, count in zip((*point.explicit_bounds, "+Inf"), point.bucket_counts):
                        cumulative += count
                        lines.append(f"{name}_bucket{_labels(attrs, resource, {'le': bound})} {cumulative}")
                    lines.append(f"{name}_sum{_labels(attrs, resource)} {point.sum}")
                    lines.append(f"{name}_count{_labels(attrs, resource)} {point.count}")
    return "\n".join(lines) + "\n"


class FakeService:
    """The distro's instruments, fed a little more traffic at every scrape."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.resources import Resource

        self.reader = InMemoryMetricReader()
        provider = MeterProvider(
            metric_readers=[self.reader],
            resource=Resource.create({"service.name": "checkout", "service.instance.id": "checkout-1"}),
        )
        from opentelemetry.metrics import Observation

        values = telemetry.BREAKER_STATE_VALUES
        self.instruments = telemetry.Instruments(
            meter_provider=provider,
            breaker_states=lambda options: [
                Observation(values["open"], FAILING), Observation(values["closed"], HEALTHY)
            ],
            probe_results=lambda options: [Observation(0, FAILING), Observation(1, HEALTHY)],
        )
        (duration,) = telemetry.UPSTREAM_INSTRUMENTS
        self.duration = provider.get_meter("opentelemetry.instrumentation.httpx").create_histogram(
            duration.name,
            unit=duration.unit,
            explicit_bucket_boundaries_advisory=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        )
        self.lock = threading.Lock()

    def step(self) -> None:
        get = {"http.request.method": "GET"}
        for _ in range(20):
            self.duration.record(2.0, {**FAILING, **get, "http.response.status_code": 200})
            self.duration.record(0.02, {**HEALTHY, **get, "http.response.status_code": 200})
        for _ in range(5):
            self.duration.record(
                2.0, {**FAILING, **get, "http.response.status_code": 503, "error.type": "503"}
            )
            # 404s are the caller's fault: never an error-rate alert.
            self.duration.record(
                0.02, {**HEALTHY, **get, "http.response.status_code": 404, "error.type": "404"}
            )
        self.instruments.retries.add(3, {**FAILING, "error.type": "503"})
        self.instruments.retry_budget_exhausted.add(2, FAILING)
        self.instruments.breaker_storage_errors.add(1, FAILING)

    def exposition(self) -> str:
        with self.lock:
            self.step()
            return render_exposition(self.reader.get_metrics_data())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())



class Prometheus:
    """A real `prometheus` scraping `exposition()` every second and evaluating alerts.yml.

    `rules` may rewrite the committed rules (the tests only shorten `for:` and
    windows so they take seconds, never the expressions' logic).
    """

    def __init__(self, tmp_path: Path, exposition: Any, rules: Any = None) -> None:
        self.binary = require_binary("prometheus")
        self.tmp_path = tmp_path
        self.exposition = exposition
        committed = yaml.safe_load(ALERTS.read_text())
        self.rules = rules(committed) if rules else committed

    def __enter__(self) -> Prometheus:
        exposition = self.exposition

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.exporter = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.exporter.serve_forever, daemon=True).start()
        tmp = self.tmp_path
        (tmp / "alerts.yml").write_text(yaml.safe_dump(self.rules))
        config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
        config["scrape_configs"] = [
            {
                "job_name": "otel-collector-apps",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{self.exporter.server_address[1]}"]}],
            }
        ]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = _free_port()
        self.log = tmp / "prometheus.log"
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.exporter.shutdown()

    def firing(self) -> list[dict]:
        assert self.process.poll() is None, self.log.read_text()
        try:
            alerts = _get_json(f"http://127.0.0.1:{self.port}/api/v1/alerts")["data"]["alerts"]
        except OSError:
            return []
        return [a for a in alerts if a["state"] == "firing"]

    def wait(self, condition: Any, what: str, timeout: float = 90) -> list[dict]:
        deadline = time.monotonic() + timeout
        firing: list[dict] = []
        while time.monotonic() < deadline:
            firing = self.firing()
            if condition(firing):
                return firing
            time.sleep(0.5)
        pytest.fail(f"{what}; firing: {sorted((a['labels']['alertname'], a['labels'].get('server_port')) for a in firing)}")


def _for_zero(rules: dict) -> dict:
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    return rules


@pytest.mark.slow
def test_prometheus_fires_the_alerts_end_to_end(tmp_path):
    service = FakeService()
    expected = {
        "HttpClientCircuitBreakerOpen",
        "HttpClientHighErrorRate",
        "HttpClientHighLatency",
        "HttpClientRetryBudgetExhausted",
        "HttpClientDependencyUnhealthy",
        "HttpClientCircuitBreakerStorageErrors",
    }
    with Prometheus(tmp_path, service.exposition, _for_zero) as prometheus:
        firing = prometheus.wait(lambda f: {a["labels"]["alertname"] for a in f} >= expected, "every alert firing")
    names = {a["labels"]["alertname"] for a in firing}
    assert names == expected, f"firing: {sorted(names)}"
    for alert in firing:
        labels = alert["labels"]
        assert labels["job"] == "checkout", labels
        if labels["alertname"] != "HttpClientCircuitBreakerStorageErrors":
            # Only the failing downstream alerts; the healthy one (with 404s) stays quiet.
            assert labels["server_address"] == "payments.internal", labels
            assert labels["server_port"] == "443" and labels["peer_service"] == "payments", labels
        assert alert["annotations"]["runbook_url"] == f"docs/runbooks/{labels['alertname']}.md"


# --- real failures, real instruments, real Prometheus ---------------------------------------------------


@pytest.mark.slow
def test_alerts_fire_and_resolve_on_real_failures(tmp_path):
    """Refused connections, timeouts, 503s and a breaker that opens then recovers with no traffic.

    The calls are real (upstream httpx instrumentation and ours, against real
    sockets); the metrics are the SDK's, rendered as the collector's exporter
    renders them. Besides `for: 0s`, the breaker alert's 1 m window is 5 s, so
    its resolution is seen in seconds.
    """
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from otel_integration._client.instrumentor import OtelIntegrationInstrumentor
    from otel_integration._settings import Settings

    resource = Resource.create({"service.name": "caller", "service.instance.id": "caller-1"})
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader], resource=resource)
    tracers = TracerProvider(resource=resource)
    upstream, ours = HTTPXClientInstrumentor(), OtelIntegrationInstrumentor()

    def shorter_windows(rules: dict) -> dict:
        for group in _for_zero(rules)["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == "HttpClientCircuitBreakerOpen":
                    rule["expr"] = rule["expr"].replace("[1m]", "[5s]")
        return rules

    refused = peers.closed_port()
    stop = threading.Event()
    with peers.QuickFaultServer() as slow, peers.QuickFaultServer() as unavailable, peers.QuickFaultServer() as dying:
        # The hammered downstreams keep their breakers closed (an open one would stop the attempts whose
        # errors the error-rate alert counts: then only the breaker alert fires); `dying` opens at 3.
        settings = replace(
            Settings(), retry_attempts=1, breaker_threshold=1_000_000, breaker_open_seconds=10.0,
            services={"dying": f"127.0.0.1:{dying.port}"}, service_overrides={"dying": {"breaker_threshold": 3}},
        )
        upstream.instrument(tracer_provider=tracers, meter_provider=meters)
        ours.instrument(settings=settings, tracer_provider=tracers, meter_provider=meters)

        def hammer(url: str, timeout: float = 5.0) -> None:
            with httpx.Client(timeout=timeout) as client:
                while not stop.is_set():
                    try:
                        client.get(url)
                    except httpx.HTTPError:
                        pass
                    stop.wait(0.05)

        workers = [
            threading.Thread(target=hammer, args=(f"http://127.0.0.1:{refused}/",), daemon=True),
            threading.Thread(target=hammer, args=(f"{slow.url}/slow?delay=3", 1.2), daemon=True),
            threading.Thread(target=hammer, args=(f"{unavailable.url}/status/503",), daemon=True),
        ]
        for worker in workers:
            worker.start()

        def by_port(firing: list[dict]) -> set[tuple[str, int]]:
            return {(a["labels"]["alertname"], int(a["labels"]["server_port"])) for a in firing}

        try:
            with Prometheus(tmp_path, lambda: render_exposition(reader.get_metrics_data()), shorter_windows) as prom:
                wanted = {
                    ("HttpClientHighErrorRate", refused),  # ConnectError attempts: visible now
                    ("HttpClientHighErrorRate", slow.port),  # ReadTimeout attempts
                    ("HttpClientHighLatency", slow.port),  # ...and their durations
                    ("HttpClientHighErrorRate", unavailable.port),
                }
                firing = prom.wait(lambda f: by_port(f) >= wanted, "the alerts of every failing downstream")
                assert ("HttpClientHighLatency", refused) not in by_port(firing)  # refusals are fast
                with httpx.Client() as client:
                    for _ in range(3):
                        client.get(f"{dying.url}/status/500")  # opens its breaker; then no traffic at all
                prom.wait(lambda f: ("HttpClientCircuitBreakerOpen", dying.port) in by_port(f), "the breaker alert")
                # No call to `dying` since: its breaker goes half-open on its own, and the alert resolves.
                prom.wait(lambda f: ("HttpClientCircuitBreakerOpen", dying.port) not in by_port(f),
                          "the breaker alert resolving with no traffic")
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=10)
            ours.uninstrument()
            upstream.uninstrument()
