"""Settings: every variable parses, every bad value names variable, value and expectation."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from otel_integration._settings import Settings, describe_default, downstream_key_from_target, mask_secret_url, options

# One good and one bad value per variable; the test below fails when a field is added without them.
CASES = {
    "OTEL_INTEGRATION_ENABLED": ("false", False, "maybe"),
    "OTEL_INTEGRATION_REQUEST_ID_HEADER": ("X-Correlation-ID", "X-Correlation-ID", "X Request"),
    "OTEL_INTEGRATION_REQUEST_ID_INCOMING_HEADERS": ("X-A, X-B", ("X-A", "X-B"), "X-A,bad header"),
    "OTEL_INTEGRATION_ASGI_INTERNAL_SPANS": ("Receive, send", frozenset({"receive", "send"}), "receive,headers"),
    "OTEL_INTEGRATION_TIMEOUT": ("2.5", 2.5, "-1"),
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
    "OTEL_INTEGRATION_CACHE": ("sqlite:///var/cache/app.db", "sqlite:///var/cache/app.db", "sqlite://relative.db"),
    "OTEL_INTEGRATION_CACHE_TTL": ("600", 600.0, "10m"),
    "OTEL_INTEGRATION_CACHE_MAX_STALE": ("0", 0.0, "-1"),
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
    "OTEL_INTEGRATION_REDACT_QUERY_PARAMS": ("session_key, X-Sig", frozenset({"session_key", "X-Sig"}), "a=b"),
    "OTEL_INTEGRATION_STRUCTURED_ERRORS": ("no", False, "maybe"),
    "OTEL_INTEGRATION_LOG_CORRELATION": ("off", False, "2"),
    "OTEL_INTEGRATION_LOG_FORMAT": ("no", False, "perhaps"),
    "OTEL_INTEGRATION_UPSTREAM_SPEEDUPS": ("off", False, "fast"),
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


@pytest.mark.parametrize(("raw", "kept"), [("send", {"send"}), ("receive", {"receive"}), ("none", set()), (" ", set())])
def test_asgi_internal_spans_values(raw: str, kept: set[str]) -> None:
    settings, problems = Settings.parse({"OTEL_INTEGRATION_ASGI_INTERNAL_SPANS": raw})
    assert problems == [] and settings.asgi_internal_spans == kept


def test_asgi_internal_spans_bad_value_names_the_variable_value_and_expectation() -> None:
    _settings, problems = Settings.parse({"OTEL_INTEGRATION_ASGI_INTERNAL_SPANS": "all"})
    assert problems == [
        "OTEL_INTEGRATION_ASGI_INTERNAL_SPANS='all' is invalid: expected receive, send or receive,send (or none); "
        "using the default (empty)"
    ]


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
    with caplog.at_level(logging.ERROR, logger="otel_integration._settings"):
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


# --- issue 11: every value `check` accepts works at runtime ---------------------------------------

# The values of the issue that passed validation, then broke the app at runtime.
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_INTEGRATION_BREAKER_OPEN_SECONDS", "0"),
        ("OTEL_INTEGRATION_BREAKER_OPEN_SECONDS", "1e308"),
        ("OTEL_INTEGRATION_BREAKER_OPEN_SECONDS", "1e12"),
        ("OTEL_INTEGRATION_BREAKER_OPEN_SECONDS", "1000000000000"),
        ("OTEL_INTEGRATION_RETRY_MAX_WAIT", "1e300"),
        ("OTEL_INTEGRATION_RETRY_INITIAL_WAIT", "99999999999"),
        ("OTEL_INTEGRATION_RETRY_JITTER", "1e20"),
        ("OTEL_INTEGRATION_RETRY_ATTEMPTS", "\u0663"),  # ARABIC-INDIC DIGIT THREE
        ("OTEL_INTEGRATION_BREAKER_THRESHOLD", "\uff15"),  # FULLWIDTH DIGIT FIVE
        ("OTEL_INTEGRATION_RETRY_DEADLINE", "1_000"),
        ("OTEL_INTEGRATION_BREAKER_STORAGE", "redis://localhost:port/0"),
        ("OTEL_INTEGRATION_BREAKER_STORAGE", "redis://localhost:99999/0"),
        ("OTEL_INTEGRATION_BREAKER_STORAGE", "redis://localhost:6379/zero"),
        ("OTEL_INTEGRATION_REQUEST_ID_HEADER", "Content-Length"),
        ("OTEL_INTEGRATION_REQUEST_ID_HEADER", "transfer-encoding"),
        ("OTEL_INTEGRATION_REQUEST_ID_HEADER", "Host"),
        ("OTEL_INTEGRATION_REQUEST_ID_HEADER", "Connection"),
        ("OTEL_INTEGRATION_REQUEST_ID_HEADER", "traceparent"),
        ("OTEL_INTEGRATION_REQUEST_ID_INCOMING_HEADERS", "X-Request-ID,Authorization"),
        ("OTEL_INTEGRATION_REQUEST_ID_INCOMING_HEADERS", "Cookie"),
    ],
)
def test_values_that_broke_the_app_are_rejected_by_name(variable, value):
    _, problems = Settings.parse({variable: value})
    assert len(problems) == 1 and problems[0].startswith(f"{variable}=")


# Every integer and float setting, as `options()` lists them (a new one is covered without editing this list).
_NUMERIC = [f for f in options() if f.type in ("int", "float")]
# ARABIC-INDIC and FULLWIDTH digits, alone, mixed with ASCII and (for floats) around a decimal point.
_NON_ASCII_INTEGERS = ["\u0663", "\uff15", "1\u0663", "\u0661\u0660"]
_NON_ASCII_FLOATS = [*_NON_ASCII_INTEGERS, "\u0660.\u0665", "\uff10.\uff15", "1.\u0665", "\u0663.0"]


def _non_ascii_cases() -> list[tuple[str, str]]:
    return [
        (f.metadata["env"], value)
        for f in _NUMERIC
        for value in (_NON_ASCII_INTEGERS if f.type == "int" else _NON_ASCII_FLOATS)
    ]


def test_the_numeric_settings_are_the_ones_the_non_ascii_test_covers():
    names = {f.name for f in _NUMERIC}
    assert {"retry_attempts", "breaker_threshold", "breaker_half_open_calls", "max_downstreams"} <= names
    assert {"timeout", "retry_deadline", "retry_max_wait", "breaker_open_seconds", "health_probe_ttl"} <= names
    for f in _NUMERIC:  # the ASCII spelling of the same numbers is accepted: the digits are what is refused
        assert f.metadata["parse"]("3") == 3
        if f.type == "float":
            assert f.metadata["parse"]("0.5") == 0.5


@pytest.mark.parametrize(("variable", "value"), _non_ascii_cases(), ids=lambda v: v.encode("unicode_escape").decode())
def test_non_ascii_digits_are_refused_for_every_numeric_setting(variable, value):
    """The issue's bug (`\u0663`, `\uff15` accepted as numbers), for every integer and float variable."""
    settings, problems = Settings.parse({variable: value})
    assert len(problems) == 1 and problems[0].startswith(f"{variable}="), problems
    name = next(f.name for f in _NUMERIC if f.metadata["env"] == variable)
    assert getattr(settings, name) == getattr(Settings(), name)  # the default is kept


@pytest.mark.parametrize(
    "field", [f for f in _NUMERIC if f.name.startswith(("retry_", "breaker_")) or f.name in ("timeout", "cache_ttl",
              "cache_max_stale")], ids=lambda f: f.name,
)
@pytest.mark.parametrize("value", ["\u0663", "\u0660.\u0665"], ids=["arabic-indic", "arabic-indic-decimal"])
def test_non_ascii_digits_are_refused_in_per_service_overrides(field, value):
    variable = f"OTEL_INTEGRATION_SERVICE_CATALOG_{field.name.upper()}"
    settings, problems = Settings.parse({"OTEL_INTEGRATION_SERVICES": "catalog=http://catalog:8082", variable: value})
    assert len(problems) == 1 and problems[0].startswith(f"{variable}="), problems
    assert settings.service_overrides == {}


def test_the_otel_variables_the_distro_relies_on_are_checked():
    from otel_integration._settings import otel_problems

    problems = otel_problems({
        "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
        "OTEL_TRACES_EXPORTER": "otlp,zipkin-nope",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318",
        "OTEL_PROPAGATORS": "tracecontext,b3-not-installed",
    })
    by_variable = {p.variable: p for p in problems}
    assert set(by_variable) == {
        "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_PROPAGATORS",
    }
    assert by_variable["OTEL_EXPORTER_OTLP_PROTOCOL"].replacement == "http/protobuf"
    assert by_variable["OTEL_TRACES_EXPORTER"].replacement == "otlp"
    assert by_variable["OTEL_EXPORTER_OTLP_ENDPOINT"].replacement is None  # unset: the SDK default
    message = by_variable["OTEL_EXPORTER_OTLP_PROTOCOL"].message()
    assert message == "OTEL_EXPORTER_OTLP_PROTOCOL='thrift' is invalid: expected grpc or http/protobuf; using http/protobuf"
    assert otel_problems({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_EXPORTER": "console,otlp"}) == []


def test_the_installed_entry_points_are_read_once(monkeypatch):
    """Reading them goes through every distribution's metadata: start-up checked four groups, twice."""
    import importlib.metadata

    from otel_integration import _settings

    reads = []
    real = importlib.metadata.distributions
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: reads.append(1) or real())
    _settings._installed_entry_points.cache_clear()
    environ = {s: "console,otlp" for s in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER")}
    environ["OTEL_PROPAGATORS"] = "tracecontext,baggage,xrequestid"
    try:
        assert _settings.otel_problems(environ) == [] and _settings.otel_problems(environ) == []
        assert len(reads) == 1
        unknown = {"OTEL_PROPAGATORS": "tracecontext,not-installed"}
        assert [p.variable for p in _settings.otel_problems(unknown)] == ["OTEL_PROPAGATORS"]
    finally:
        _settings._installed_entry_points.cache_clear()


def test_a_redis_url_without_the_redis_client_names_the_extra(monkeypatch):
    from otel_integration import _settings

    monkeypatch.setattr(_settings, "redis_client_available", lambda: False)
    _, problems = Settings.parse({"OTEL_INTEGRATION_BREAKER_STORAGE": "redis://:pw@cache:6379/0"})
    assert problems == [
        "OTEL_INTEGRATION_BREAKER_STORAGE='redis://:***@cache:6379/0' needs the redis client: "
        "pip install 'otel-integration[redis]'; breakers keep their state in memory"
    ]


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("off", "off"), ("", "off"), ("Memory", "memory"), ("sqlite:///tmp/c.db", "sqlite:///tmp/c.db"),
        ("redis://:pw@cache:6379/1", "redis://:pw@cache:6379/1"), ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("sqlite://", None), ("sqlite:///tmp/", None), ("sqlite:///tmp/../etc/x.db", None), ("file:///x", None),
        ("redis://cache:port/0", None),
    ],
)
def test_cache_values(raw, parsed):
    settings, problems = Settings.parse({"OTEL_INTEGRATION_CACHE": raw})
    if parsed is None:
        assert len(problems) == 1 and problems[0].startswith("OTEL_INTEGRATION_CACHE=")
        assert settings.cache == "off"
    else:
        assert settings.cache == parsed and problems == []


def test_a_service_overrides_the_cache_ttl_and_max_stale():
    settings, problems = Settings.parse({
        "OTEL_INTEGRATION_SERVICES": "catalog=http://catalog:8082",
        "OTEL_INTEGRATION_CACHE_TTL": "300",
        "OTEL_INTEGRATION_SERVICE_CATALOG_CACHE_TTL": "900",
        "OTEL_INTEGRATION_SERVICE_CATALOG_CACHE_MAX_STALE": "60",
    })
    assert problems == []
    assert (settings.cache_ttl, settings.for_service("catalog").cache_ttl) == (300.0, 900.0)
    assert settings.for_service("catalog").cache_max_stale == 60.0
    _, problems = Settings.parse({
        "OTEL_INTEGRATION_SERVICES": "catalog=http://catalog:8082", "OTEL_INTEGRATION_SERVICE_CATALOG_CACHE": "memory",
    })
    assert problems == ["OTEL_INTEGRATION_SERVICE_CATALOG_CACHE is not a known setting; it is ignored"]


def test_a_cache_without_hishel_or_the_redis_client_names_the_extra(monkeypatch):
    from otel_integration import _settings

    monkeypatch.setattr(_settings, "cache_available", lambda: False)
    _, problems = Settings.parse({"OTEL_INTEGRATION_CACHE": "memory"})
    assert problems == [
        "OTEL_INTEGRATION_CACHE='memory' needs hishel: pip install 'otel-integration[cache]'; responses are not cached"
    ]
    monkeypatch.setattr(_settings, "cache_available", lambda: True)
    monkeypatch.setattr(_settings, "redis_client_available", lambda: False)
    _, problems = Settings.parse({"OTEL_INTEGRATION_CACHE": "redis://:pw@cache:6379/0"})
    assert problems == [
        "OTEL_INTEGRATION_CACHE='redis://:***@cache:6379/0' needs the redis client: "
        "pip install 'otel-integration[cache,redis]'; responses are not cached"
    ]


def _raw_values():
    """Strings for any variable: each variable's own good values, numbers at and past every bound, junk."""
    from hypothesis import strategies as st

    numbers = st.one_of(
        st.integers(min_value=-10, max_value=2_000_000).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.decimals(min_value=0, max_value=100_000, places=3).map(str),
        st.sampled_from(["0", "0.0", "1e3", "1e308", "86400", "86400.001", "3600", "100", "101", ".5", "5.", "\u0663"]),
    )
    good = st.sampled_from([raw for raw, _expected, _bad in CASES.values()])
    return st.one_of(numbers, good, st.text(max_size=20))


@pytest.mark.parametrize("variable", sorted(CASES))
def test_any_accepted_value_starts_the_layer_and_a_call_succeeds(variable):
    """Property (hypothesis): a value `check` accepts never breaks the layer or a call, sync and async."""
    import asyncio

    import httpx
    from hypothesis import HealthCheck, given, settings as hsettings

    from otel_integration import AsyncResilientTransport, ResilientTransport
    from otel_integration._client.layer import ResilienceLayer

    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    @hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw=_raw_values())
    def check(raw: str) -> None:
        parsed, problems = Settings.parse({variable: raw})
        if any(p.startswith(f"{variable}=") and "is invalid" in p for p in problems):
            return  # rejected: the default is used (the tests above)
        if not parsed.enabled:
            return
        storage_redis = parsed.breaker_storage != "memory"
        layer = ResilienceLayer(parsed)
        try:
            if storage_redis:
                layer.shared.close()  # no Redis here: the sync thread would only retry
            with httpx.Client(transport=ResilientTransport(httpx.MockTransport(ok), layer)) as client:
                assert client.get("http://svc.test/").status_code == 200

            async def main() -> int:
                async with httpx.AsyncClient(transport=AsyncResilientTransport(httpx.MockTransport(ok), layer)) as c:
                    return (await c.get("http://svc.test/")).status_code

            assert asyncio.run(main()) == 200
        finally:
            layer.close()

    check()
