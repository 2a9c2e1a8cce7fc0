"""The overhead benchmark (benchmarks/run.py) runs every scenario at tiny N.

No timing is asserted: this only proves the benchmark works and its report
is well-formed, so a change that breaks it is caught before the next full run.
The first run builds the benchmark's venvs (benchmarks/.venvs, needs PyPI);
without PyPI the test is skipped on a laptop and fails in CI.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
CONFIGS = ("bare", "official", "ours")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    setup = subprocess.run([sys.executable, str(RUN), "--setup"], capture_output=True, text=True, timeout=900)
    if setup.returncode != 0:
        message = f"could not build the benchmark venvs:\n{setup.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("bench") / "report.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_scenario_ran(report: dict) -> None:
    assert set(report["raw"]) == {"happy", "breaker", "collector", "memory"}
    assert report["meta"]["mode"] == "quick"
    for config in CONFIGS:
        (run,) = report["raw"]["happy"]["runs"][config]  # one round in quick mode
        for kind in ("sync", "async", "concurrent"):
            assert run[kind]["n"] > 0 and _number(run[kind]["mean_us"]) and _number(run[kind]["p99_us"])


@pytest.mark.slow
def test_each_configuration_is_what_it_claims(report: dict) -> None:
    checks = report["summary"]["checks"]
    assert not checks["bare"]["upstream_httpx_instrumented"] and not checks["bare"]["traceparent"]
    assert checks["official"]["upstream_httpx_instrumented"] and checks["official"]["traceparent"]
    assert not checks["official"]["otel_integration_layer"] and not checks["official"]["x-request-id"]
    assert checks["ours"]["otel_integration_layer"] and checks["ours"]["traceparent"] and checks["ours"]["x-request-id"]


@pytest.mark.slow
def test_summary_is_well_formed(report: dict) -> None:
    s = report["summary"]
    for kind in ("sync", "async"):
        for config in CONFIGS:
            assert _number(s[kind][config]["mean_us"])
        assert _number(s[kind]["ours_vs_official"]) and isinstance(s[kind]["target_met"], bool)
    assert all(_number(s["concurrent"][c]["requests_per_s"]) for c in CONFIGS)
    for kind in ("sync", "async"):
        assert _number(s["breaker"][kind]["rejected_us"]) and _number(s["breaker"][kind]["ratio"])
        for variant in ("up", "down", "blackhole"):
            assert _number(s["collector"][kind][variant]["mean_us"])
    ours = s["memory"]["ours"]
    assert len(ours["rounds"]) >= 2 and all(_number(mb) for _, mb in ours["rounds"])
    assert 0 < ours["downstreams"] <= ours["max_downstreams"] and ours["breakers"] <= ours["max_downstreams"]


@pytest.mark.slow
def test_markdown_table_is_rendered(report: dict) -> None:
    markdown = report["markdown"]
    for label in ("sync request", "async request", "concurrent async", "open breaker", "black-holed", "RSS"):
        assert label in markdown
    assert "nan" not in markdown.lower()
