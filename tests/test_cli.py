"""`otel-integration check`: the effective configuration, secrets masked, exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "otel-integration")


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([CLI, "check"], env={**base, **env}, capture_output=True, text=True, timeout=30)


def test_check_prints_defaults_and_exits_zero():
    result = run({})
    assert result.returncode == 0, result.stderr
    assert "OTEL_INTEGRATION_RETRY_ATTEMPTS = 3 [default]" in result.stdout
    assert "OTEL_EXPORTER_OTLP_PROTOCOL = 'http/protobuf' [distro default]" in result.stdout
    assert "configuration OK" in result.stdout


def test_check_reports_invalid_values_and_exits_non_zero():
    result = run({"OTEL_INTEGRATION_BREAKER_THRESHOLD": "lots"})
    assert result.returncode == 1
    assert "OTEL_INTEGRATION_BREAKER_THRESHOLD='lots' is invalid: expected an integer from 1 to 1000000" in result.stdout


def test_check_masks_secrets():
    result = run(
        {
            "OTEL_INTEGRATION_BREAKER_STORAGE": "redis://app:s3cret@redis:6379/0",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer s3cret",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:s3cret@collector:4318",
        }
    )
    assert result.returncode == 0
    assert "s3cret" not in result.stdout
    assert "redis://app:***@redis:6379/0" in result.stdout


def test_check_shows_per_service_overrides():
    result = run(
        {
            "OTEL_INTEGRATION_SERVICES": "extract=http://extract:8081",
            "OTEL_INTEGRATION_SERVICE_EXTRACT_RETRY_ATTEMPTS": "5",
        }
    )
    assert result.returncode == 0, result.stdout
    assert "OTEL_INTEGRATION_SERVICE_EXTRACT_RETRY_ATTEMPTS = '5' [env, override for extract]" in result.stdout
