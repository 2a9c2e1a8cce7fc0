"""Structure of collector/otel-collector-config.yaml and collector/compose.yaml.

Neither the collector nor Docker runs here, so these tests check what can be
checked statically: pipelines reference defined components, memory_limiter is
first, the OTLP ports match the distro's default endpoint, traces reach Jaeger,
metrics reach Prometheus, and compose mounts files that exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import peers
import yaml

ROOT = Path(__file__).resolve().parent.parent
COLLECTOR_DIR = ROOT / "collector"
CONFIG_PATH = COLLECTOR_DIR / "otel-collector-config.yaml"
COMPOSE_PATH = COLLECTOR_DIR / "compose.yaml"
PROMETHEUS_PATH = COLLECTOR_DIR / "prometheus" / "prometheus.yml"

SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")

# Type names deprecated by the 2026 lower_snake_case renames (old -> new), and
# the batch processor, replaced by exporter-side batching.
DEPRECATED_TYPES = {
    ("exporters", "otlp"): "otlp_grpc",
    ("exporters", "otlphttp"): "otlp_http",
    ("connectors", "spanmetrics"): "span_metrics",
    ("connectors", "servicegraph"): "service_graph",
    ("processors", "batch"): "sending_queue.batch in the exporters",
    ("exporters", "logging"): "debug",
    ("extensions", "healthcheck"): "health_check",
    ("processors", "memorylimiter"): "memory_limiter",
}

ENV_REF = re.compile(r"\$\{env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def require_binary(name: str) -> str:
    return peers.require_binary(name, "install Debian's prometheus package")


def resolve_defaults(value, env: dict[str, str] | None = None):
    """Expand `${env:VAR:-default}` as the collector would with `env` set."""
    env = env or {}
    if isinstance(value, dict):
        return {k: resolve_defaults(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_defaults(v, env) for v in value]
    if isinstance(value, str):
        return ENV_REF.sub(lambda m: env.get(m["name"], m["default"] or ""), value)
    return value


@pytest.fixture(scope="module")
def raw_config() -> dict:
    return yaml.safe_load(CONFIG_PATH.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_PATH.read_text())


@pytest.fixture(scope="module")
def collector_env(compose) -> dict[str, str]:
    env = compose["services"]["otel-collector"].get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    # compose interpolates ${VAR:-default} itself before the collector sees it.
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


@pytest.fixture(scope="module")
def config(raw_config, collector_env) -> dict:
    return resolve_defaults(raw_config, collector_env)


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def host_port(endpoint: str) -> tuple[str, int]:
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def distro_default_otlp_endpoint() -> str:
    """Where the distro exports to when the user sets nothing."""
    try:
        from otel_integration import _distro as distro

        defaults = dict(distro.DEFAULTS)
    except ImportError:  # the distro module is not importable yet
        defaults = {}
    endpoint = defaults.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        return endpoint
    protocol = defaults.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert protocol == "http/protobuf", f"distro exports with {protocol}, expected OTLP/HTTP"
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import DEFAULT_ENDPOINT

    return DEFAULT_ENDPOINT


# --- collector config ---------------------------------------------------------------


def test_env_substitution_uses_collector_syntax():
    text = CONFIG_PATH.read_text()
    # `$VAR` / `${VAR}` without the env: scheme is not expanded by current collectors.
    assert not re.search(r"\$(?!\{env:)[{A-Za-z]", text), "use ${env:VAR:-default}"
    assert ENV_REF.search(text)


def test_pipelines_reference_defined_components(config):
    service = config["service"]
    pipelines = service["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    connectors = set(config.get("connectors") or {})
    for name, pipeline in pipelines.items():
        signal = name.split("/", 1)[0]
        assert signal in {"traces", "metrics", "logs", "profiles"}, name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                defined = set(config.get(kind) or {})
                if kind != "processors":
                    defined |= connectors
                assert component in defined, f"pipeline {name}: {kind[:-1]} {component} is not defined"
        assert pipeline["receivers"] and pipeline["exporters"], name
    for extension in service.get("extensions", []):
        assert extension in (config.get("extensions") or {}), f"extension {extension} not defined"


def test_connectors_join_two_pipelines(config):
    pipelines = config["service"]["pipelines"].values()
    for connector in config.get("connectors") or {}:
        assert any(connector in p.get("exporters", []) for p in pipelines), connector
        assert any(connector in p.get("receivers", []) for p in pipelines), connector


def test_every_defined_component_is_used(config):
    pipelines = config["service"]["pipelines"].values()
    used = {c for p in pipelines for kind in ("receivers", "processors", "exporters") for c in p.get(kind, [])}
    for kind in ("receivers", "processors", "exporters", "connectors"):
        for component in config.get(kind) or {}:
            assert component in used, f"{kind[:-1]} {component} is defined but unused"
    assert set(config.get("extensions") or {}) <= set(config["service"].get("extensions", []))


def test_memory_limiter_is_first_in_every_pipeline(config):
    assert "memory_limiter" in config["processors"]
    for name, pipeline in config["service"]["pipelines"].items():
        processors = pipeline.get("processors", [])
        assert processors and component_type(processors[0]) == "memory_limiter", name


def test_no_deprecated_component_names(config):
    for section in SECTIONS:
        for component in config.get(section) or {}:
            replacement = DEPRECATED_TYPES.get((section, component_type(component)))
            assert replacement is None, f"{section}: {component} is deprecated, use {replacement}"


def test_batching_is_done_in_the_exporters(config):
    for name, exporter in config["exporters"].items():
        if component_type(name) in {"otlp_grpc", "otlp_http"}:
            queue = exporter.get("sending_queue") or {}
            assert queue.get("enabled", True) and "batch" in queue, f"{name}: no sending_queue.batch"


def test_otlp_receiver_listens_on_all_interfaces(config):
    protocols = config["receivers"]["otlp"]["protocols"]
    assert host_port(protocols["grpc"]["endpoint"]) == ("0.0.0.0", 4317)
    assert host_port(protocols["http"]["endpoint"]) == ("0.0.0.0", 4318)


def test_otlp_http_port_matches_the_distro_default_endpoint(config, compose):
    host, port = host_port(distro_default_otlp_endpoint())
    assert host in {"localhost", "127.0.0.1"}
    assert host_port(config["receivers"]["otlp"]["protocols"]["http"]["endpoint"])[1] == port
    published = compose["services"]["otel-collector"]["ports"]
    assert f"{port}:{port}" in published, "compose must publish the distro's OTLP port"


def test_traces_reach_jaeger(config, compose):
    jaeger = compose["services"]["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/jaeger:2."), "Jaeger v2 image"
    for name in config["service"]["pipelines"]["traces"]["exporters"]:
        if component_type(name) in {"otlp_grpc", "otlp_http"}:
            host, port = host_port(config["exporters"][name]["endpoint"])
            if host == "jaeger":
                assert port == (4317 if component_type(name) == "otlp_grpc" else 4318)
                break
    else:
        pytest.fail("no traces exporter sends OTLP to the jaeger service")
    assert "16686:16686" in jaeger.get("ports", []), "Jaeger UI on 16686"


def test_metrics_reach_prometheus(config):
    exporters = config["service"]["pipelines"]["metrics"]["exporters"]
    assert "prometheus" in exporters
    prom = config["exporters"]["prometheus"]
    assert prom.get("translation_strategy") == "UnderscoreEscapingWithSuffixes"
    _, port = host_port(prom["endpoint"])
    scrape = yaml.safe_load(PROMETHEUS_PATH.read_text())
    jobs = [
        job
        for job in scrape["scrape_configs"]
        for static in job.get("static_configs", [])
        if f"otel-collector:{port}" in static.get("targets", [])
    ]
    assert jobs, f"prometheus.yml does not scrape otel-collector:{port}"
    assert all(job.get("honor_labels") for job in jobs), "keep the exporter's job/instance labels"


def test_span_metrics_feed_the_metrics_pipeline(config):
    pipelines = config["service"]["pipelines"]
    if "span_metrics" in (config.get("connectors") or {}):
        assert "span_metrics" in pipelines["traces"]["exporters"]
        assert "span_metrics" in pipelines["metrics"]["receivers"]


def test_health_check_and_debug_exporter(config, raw_config):
    assert "health_check" in config["service"]["extensions"]
    assert host_port(config["extensions"]["health_check"]["endpoint"]) == ("0.0.0.0", 13133)
    assert config["exporters"]["debug"]["verbosity"] in {"basic", "normal", "detailed"}
    # Switchable from the environment without editing the file.
    assert ENV_REF.fullmatch(raw_config["exporters"]["debug"]["verbosity"])
    for name, pipeline in config["service"]["pipelines"].items():
        assert "debug" in pipeline["exporters"], name


# --- compose ------------------------------------------------------------------------


def test_compose_services_and_pinned_images(compose):
    services = compose["services"]
    assert {"otel-collector", "jaeger", "prometheus", "grafana", "redis"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert re.search(r"\d", tag) and tag != "latest", f"{name}: pin {image} to a version"
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")


def test_collector_version_matches_the_config(compose):
    version = compose["services"]["otel-collector"]["image"].rsplit(":", 1)[1]
    assert f"contrib {version}" in CONFIG_PATH.read_text(), "config header names another version"


def test_compose_health_checks(compose):
    for name in ("prometheus", "grafana", "redis"):
        assert compose["services"][name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((COLLECTOR_DIR / volume["source"], volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((COLLECTOR_DIR / source, target))
    return mounts


def test_compose_mounts_files_that_exist(compose):
    count = 0
    for name, service in compose["services"].items():
        for source, _ in bind_mounts(service):
            assert source.resolve().is_relative_to(ROOT), f"{name}: {source} outside the repo"
            assert source.exists(), f"{name}: mounts {source}, which does not exist"
            count += 1
    assert count >= 6


def mounted(service: dict, source: Path) -> str:
    for src, target in bind_mounts(service):
        if src.resolve() == source.resolve():
            return target
    raise AssertionError(f"{source} is not mounted")


def test_collector_runs_the_repo_config(compose):
    service = compose["services"]["otel-collector"]
    target = mounted(service, CONFIG_PATH)
    assert f"--config={target}" in service["command"]


def test_prometheus_loads_the_alert_rules(compose):
    service = compose["services"]["prometheus"]
    config_target = mounted(service, PROMETHEUS_PATH)
    assert f"--config.file={config_target}" in service["command"]
    alerts_target = mounted(service, PROMETHEUS_PATH.with_name("alerts.yml"))
    rule_files = yaml.safe_load(PROMETHEUS_PATH.read_text())["rule_files"]
    resolved = {str(Path(config_target).parent / f) if not f.startswith("/") else f for f in rule_files}
    assert alerts_target in resolved, "prometheus.yml rule_files must point at the mounted alerts.yml"


def test_grafana_provisioning_is_mounted(compose):
    service = compose["services"]["grafana"]
    grafana = COLLECTOR_DIR / "grafana"
    targets = {t for _, t in bind_mounts(service)}
    assert any(t.startswith("/etc/grafana/provisioning/datasources/") for t in targets)
    assert any(t.startswith("/etc/grafana/provisioning/dashboards/") for t in targets)
    datasources = yaml.safe_load((grafana / "provisioning/datasources/datasources.yaml").read_text())
    by_type = {d["type"]: d for d in datasources["datasources"]}
    assert urlsplit(by_type["prometheus"]["url"]).hostname == "prometheus"
    assert urlsplit(by_type["jaeger"]["url"]).hostname == "jaeger"
    assert urlsplit(by_type["jaeger"]["url"]).port == 16686
    providers = yaml.safe_load((grafana / "provisioning/dashboards/dashboards.yaml").read_text())
    path = providers["providers"][0]["options"]["path"]
    for dashboard in (grafana / "dashboards").glob("*.json"):
        assert mounted(service, dashboard).startswith(path.rstrip("/") + "/")


# --- prometheus.yml -------------------------------------------------------------------


def test_promtool_check_config():
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "config", PROMETHEUS_PATH.name],
        cwd=PROMETHEUS_PATH.parent, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout


def test_log_records_go_to_a_file_a_user_can_read(config, compose):
    """The logs pipeline ends in collector/logs/logs.jsonl on the host, not only in the sampled debug output."""
    (name,) = [n for n in config["service"]["pipelines"]["logs"]["exporters"] if component_type(n) == "file"]
    path = config["exporters"][name]["path"]
    directory = mounted(compose["services"]["otel-collector"], ROOT / "collector" / "logs")
    assert path.endswith(f"{directory}/logs.jsonl}}") or f"{directory}/logs.jsonl" in path


def test_prometheus_stores_exemplars(compose, config):
    """Prometheus drops exemplars unless the feature is on; the collector exports them (OpenMetrics)."""
    assert "--enable-feature=exemplar-storage" in compose["services"]["prometheus"]["command"]
    assert config["exporters"]["prometheus"]["enable_open_metrics"] is True
