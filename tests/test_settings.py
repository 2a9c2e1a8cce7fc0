"""Settings: every variable parses, every bad value names variable, value and expectation."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from otel_integration.settings import Settings, describe_default, downstream_key_from_target, mask_secret_url, options

# One good and one bad value per variable; the test below fails when a field is added without them.
CASES = {
    "OTEL_INTEGRATION_ENABLED": ("false", False, "maybe"),
    "OTEL_INTEGRATION_REQUEST_ID_HEADER": ("X-Correlation-ID", "X-Correlation-ID", "X Request"),
    "OTEL_INTEGRATION_REQUEST_ID_INCOMING_HEADERS": ("X-A, X-B", ("X-A", "X-B"), "X-A,bad header"),
    "OTEL_INTEGRATION_RETRY_ATTEMPTS": ("5", 5, "0"),
    "OTEL_INTEGRATION_RETRY_INITIAL_WAIT": ("0.5", 0.5, "-1"),
    "OTEL_INTEGRATION_RETRY_MAX_WAIT": ("2", 2.0, "nan"),
    "OTEL_INTEGRATION_RETRY_JITTER": ("0", 0.0, "inf"),
    "OTEL_INTEGRATION_RETRY_DEADLINE": ("10", 10.0, "ten"),
    "OTEL_INTEGRATION_RETRY_STATUS_CODES": ("429,500-502", frozenset({429, 500, 501, 502}), "700"),
    "OTEL_INTEGRATION_RETRY_BUDGET_RATIO": ("0.5", 0.5, "11"),
    "OTEL_INTEGRATION_RETRY_BUDGET_MIN_PER_SECOND": ("1", 1.0, "-0.1"),
    "OTEL_INTEGRATION_BREAKER_THRESHOLD": ("3", 3, "1.5"),
    "OTEL_INTEGRATION_BREAKER_OPEN_SECONDS": ("1.5", 1.5, "soon"),
    "OTEL_INTEGRATION_BREAKER_HALF_OPEN_CALLS": ("2", 2, "0"),
    "OTEL_INTEGRATION_BREAKER_FAILURE_STATUS_CODES": ("5xx,429", frozenset({*range(500, 600), 429}), "6xx"),
    "OTEL_INTEGRATION_BREAKER_STORAGE": ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", "mysql://x"),
    "OTEL_INTEGRATION_MAX_DOWNSTREAMS": ("10", 10, "-5"),
    "OTEL_INTEGRATION_SERVICES": (
        "extract=http://Extract:8081/api,catalog=catalog",
        {"extract": "extract:8081", "catalog": "catalog:80"},
        "extract",
    ),
    "OTEL_INTEGRATION_HEALTH_PATH": ("/healthz", "/healthz", "healthz"),
    "OTEL_INTEGRATION_HEALTH_PROBES": (
        "extract=http://extract:8081/healthz",
        {"extract": "http://extract:8081/healthz"},
        "extract=ftp://x",
    ),
    "OTEL_INTEGRATION_HEALTH_PROBE_TTL": ("5", 5.0, "-5"),
    "OTEL_INTEGRATION_HEALTH_UNHEALTHY_WHEN": ("any_open", "any_open", "sometimes"),
    "OTEL_INTEGRATION_AUTH_FORWARD_TO": ("catalog, extract:8081", frozenset({"catalog", "extract:8081"}), "a b"),
    "OTEL_INTEGRATION_LOG_CORRELATION": ("off", False, "2"),
    "OTEL_INTEGRATION_LOG_FORMAT": ("no", False, "perhaps"),
}


def test_every_variable_has_cases():
    documented = {f.metadata["env"] for f in options()}
    missing = documented - set(CASES)
    assert not missing, f"add good/bad cases for {missing}"


@pytest.mark.parametrize("variable", sorted(CASES))
def test_good_value_is_parsed(variable):
    raw, expected, _bad = CASES[variable]
    settings, problems = Settings.parse({variable: raw})
    field = next(f for f in options() if f.metadata["env"] == variable)
    assert problems == []
    assert getattr(settings, field.name) == expected


@pytest.mark.parametrize("variable", sorted(CASES))
def test_bad_value_names_variable_value_and_expectation_and_keeps_default(variable):
    _raw, _expected, bad = CASES[variable]
    settings, problems = Settings.parse({variable: bad})
    field = next(f for f in options() if f.metadata["env"] == variable)
    assert len(problems) == 1
    message = problems[0]
    assert message.startswith(f"{variable}=")
    assert repr(bad) in message
    assert f"expected {field.metadata['expected']}" in message
    assert f"using the default {describe_default(field)}" in message
    assert getattr(settings, field.name) == getattr(Settings(), field.name)


def test_defaults_match_the_issue():
    s = Settings()
    assert s.retry_attempts == 3
    assert (s.retry_initial_wait, s.retry_max_wait, s.retry_deadline) == (0.1, 5.0, 30.0)
    assert s.retry_status_codes == {429, 502, 503, 504}
    assert (s.breaker_threshold, s.breaker_open_seconds) == (5, 30.0)
    assert s.breaker_failure_status_codes == set(range(500, 600))
    assert s.request_id_header == "X-Request-ID"


def test_empty_value_means_default():
    settings, problems = Settings.parse({"OTEL_INTEGRATION_RETRY_ATTEMPTS": "  "})
    assert problems == [] and settings.retry_attempts == 3


def test_unknown_variable_is_reported():
    _settings, problems = Settings.parse({"OTEL_INTEGRATION_RETRY_ATTEMPT": "3"})
    assert problems == ["OTEL_INTEGRATION_RETRY_ATTEMPT is not a known setting; it is ignored"]


def test_bad_values_are_bounded_printable_and_secrets_masked():
    hostile = "x\r\nInjected: yes" + "A" * 10_000
    _s, problems = Settings.parse({"OTEL_INTEGRATION_RETRY_ATTEMPTS": hostile})
    assert "\r" not in problems[0] and "\n" not in problems[0]
    assert len(problems[0]) < 300
    _s, problems = Settings.parse({"OTEL_INTEGRATION_BREAKER_STORAGE": "mysql://user:hunter2@db/0"})
    assert "hunter2" not in problems[0]


def test_from_env_logs_one_error_per_bad_value(caplog):
    with caplog.at_level(logging.ERROR, logger="otel_integration.settings"):
        settings = Settings.from_env({"OTEL_INTEGRATION_RETRY_ATTEMPTS": "x", "OTEL_INTEGRATION_ENABLED": "y"})
    assert settings.retry_attempts == 3 and settings.enabled is True
    assert len(caplog.records) == 2


def test_helpers():
    assert mask_secret_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert mask_secret_url("redis://h:1/0") == "redis://h:1/0"
    assert downstream_key_from_target("https://Api.example:8443/v1") == "api.example:8443"
    assert downstream_key_from_target("svc") == "svc:80"


def test_readme_documents_every_variable_with_its_default():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for field in options():
        env = field.metadata["env"]
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{env}`")), None)
        assert row is not None, f"{env} is missing from the README configuration table"
        assert f"`{describe_default(field)}`" in row, f"README default of {env} is out of date"


def test_settings_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().retry_attempts = 2  # type: ignore[misc]
