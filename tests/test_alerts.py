"""Alert rules (collector/prometheus/alerts.yml): valid, tested, and using only
metric names the distro really emits.

promtool-based tests skip on a laptop without promtool, but fail when the `CI`
environment variable is set (CI installs Debian's `prometheus` package).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from otel_integration import telemetry

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "collector" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"


def require_binary(name: str) -> str:
    """Path of `name`; skip without it, unless running in CI where it must exist."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found on PATH (install Debian's `prometheus` package)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)
    return path


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
