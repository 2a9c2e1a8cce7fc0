"""The Grafana dashboard (collector/grafana/dashboards/*.json): valid, provisioned,
and using only metric names the distro emits."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "collector" / "grafana" / "dashboards"
DASHBOARD = DASHBOARD_DIR / "otel-integration.json"
DATASOURCES = ROOT / "collector" / "grafana" / "provisioning" / "datasources" / "datasources.yaml"

# One parser and one list of expected names for alerts and dashboard: both
# live in test_alerts.py (loaded by path, the tests directory is no package).
_spec = importlib.util.spec_from_file_location("_alert_helpers", Path(__file__).with_name("test_alerts.py"))
_alerts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_alerts)
promql_metric_names = _alerts.promql_metric_names
expected_metric_names = _alerts.expected_metric_names
require_binary = _alerts.require_binary

GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows
    return panels


def targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in all_panels(dashboard) for t in p.get("targets", [])]


def variable_queries(dashboard: dict) -> list[str]:
    queries = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def variable_metric_names(query: str) -> set[str]:
    """`label_values(metric{...}, label)` -> {metric}; other queries are PromQL."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query)
    if match:
        return promql_metric_names(match.group(1))
    match = re.fullmatch(r"\s*(?:query_result|metrics)\((.*)\)\s*", query)
    return promql_metric_names(match.group(1) if match else query)


def test_dashboard_is_valid_and_well_formed(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']}: no query"
    for title, target in targets(dashboard):
        assert target.get("expr"), title
    ref_ids = [(p["id"], t["refId"]) for p in panels for t in p.get("targets", [])]
    assert len(ref_ids) == len(set(ref_ids)), "refIds must be unique within a panel"


def test_every_metric_in_the_dashboard_is_emitted_by_the_distro(dashboard):
    expected = expected_metric_names()
    for title, target in targets(dashboard):
        used = promql_metric_names(target["expr"])
        assert used, f"{title}: no metric in {target['expr']}"
        assert used <= expected, f"{title}: unknown metrics {used - expected}"
    for query in variable_queries(dashboard):
        used = variable_metric_names(query)
        assert used <= expected, f"variable query {query}: unknown metrics {used - expected}"


def test_dashboard_covers_the_integration(dashboard):
    used = set()
    exprs = [t["expr"] for _, t in targets(dashboard)]
    for expr in exprs:
        used |= promql_metric_names(expr)
    required = {
        "http_client_request_duration_seconds_count",  # request rate, errors
        "http_client_request_duration_seconds_bucket",  # latency quantiles
        "http_client_circuit_breaker_state",
        "http_client_circuit_breaker_transitions_total",
        "http_client_retries_total",
        "http_client_retry_budget_exhausted_total",
        "http_client_dependency_health",
        "http_client_cache_requests_total",  # hit ratio, stale-served count
    }
    assert required <= used, f"not on the dashboard: {required - used}"
    assert any(re.search(r"by \([^)]*error_type", e) for e in exprs), "errors by error.type"
    assert any(re.search(r"by \([^)]*server_address", e) for e in exprs), "per downstream"
    types = {p["type"] for p in all_panels(dashboard)}
    assert "state-timeline" in types, "breaker states over time"
    titles = " ".join(p["title"].lower() for p in all_panels(dashboard))
    for word in ("overview", "latency", "error", "breaker", "retr", "hit ratio", "stale"):
        assert word in titles, f"no panel about {word}"


def test_panels_use_a_provisioned_prometheus_datasource(dashboard):
    provisioned = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    variables = {v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"}
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        for ds in [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]:
            assert ds and ds["type"] == "prometheus", panel["title"]
            uid = ds["uid"]
            assert uid in provisioned or uid.strip("${}") in variables, f"{panel['title']}: {uid}"


def test_dashboard_queries_are_valid_promql(dashboard, tmp_path):
    """Every query parses, checked by promtool as recording rules."""
    promtool = require_binary("promtool")
    rules = []
    exprs = [t["expr"] for _, t in targets(dashboard)] + [
        q for q in (re.sub(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", r"\1", q) for q in variable_queries(dashboard))
    ]
    for i, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # $job, $downstream in regex matchers
        rules.append({"record": f"dashboard:query:{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
