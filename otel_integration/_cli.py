"""The `otel-integration` command.

    otel-integration check      print the effective configuration; exit 1 if any value is invalid
    otel-integration receive    an embedded OTLP/HTTP receiver that prints traces as they complete
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from otel_integration import _distro as distro
from otel_integration._settings import Settings, _shown, describe_default, options, otel_problems

# The standard variables that change what this distro does.
OTEL_VARIABLES = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_PROPAGATORS",
    "OTEL_SEMCONV_STABILITY_OPT_IN",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_PYTHON_DISTRO",
    "OTEL_PYTHON_CONFIGURATOR",
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
    "OTEL_SDK_DISABLED",
)
_SECRET_VARIABLES = {"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"}


def check(environ: Mapping[str, str], out: object = sys.stdout) -> int:
    """Print the effective configuration; 1 when any value is invalid."""
    settings, problems = Settings.parse(environ)
    write = out.write  # type: ignore[attr-defined]
    write("otel-integration settings (value [source]):\n")
    invalid = {p.split("=", 1)[0] for p in problems}
    for f in options():
        env = f.metadata["env"]
        secret = f.metadata["secret"]
        if env in invalid:
            line = f"{_shown(environ[env], secret=secret)} [env, INVALID: using {describe_default(f)}]"
        elif environ.get(env, "").strip():
            line = f"{_describe(getattr(settings, f.name), secret=secret)} [env]"
        else:
            line = f"{describe_default(f)} [default]"
        write(f"  {env} = {line}\n")
    for service, overrides in sorted(settings.service_overrides.items()):
        for name, value in sorted(overrides.items()):
            env = f"OTEL_INTEGRATION_SERVICE_{service.upper().replace('-', '_')}_{name.upper()}"
            write(f"  {env} = {_describe(value, secret=False)} [env, override for {service}]\n")
    effective = dict(environ)
    for name, value in distro.DEFAULTS.items():
        effective.setdefault(name, value)
    write("OpenTelemetry settings (under opentelemetry-instrument with this distro):\n")
    for name in OTEL_VARIABLES:
        if name in effective:
            source = "env" if name in environ else "distro default"
            value = "***" if name in _SECRET_VARIABLES else _shown(effective[name], secret=True)
            write(f"  {name} = {value} [{source}]\n")
    if "OTEL_EXPORTER_OTLP_ENDPOINT" not in environ:
        write("  OTEL_EXPORTER_OTLP_ENDPOINT = 'http://localhost:4318' [SDK default for http/protobuf]\n")
    problems += [problem.message() for problem in otel_problems(effective)]
    if problems:
        write(f"{len(problems)} problem(s):\n")
        for problem in problems:
            write(f"  {problem}\n")
        return 1
    write("configuration OK\n")
    return 0


def _describe(value: object, *, secret: bool) -> str:
    if isinstance(value, frozenset):
        value = ",".join(str(v) for v in sorted(value))
    elif isinstance(value, tuple):
        value = ",".join(value)
    elif isinstance(value, dict):
        value = ",".join(f"{k}={v}" for k, v in value.items())
    elif isinstance(value, bool):
        value = str(value).lower()
    return _shown(str(value), secret=secret)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otel-integration", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="print the effective configuration; exit 1 if any value is invalid")
    commands.add_parser("receive", help="listen for OTLP/HTTP and print traces as they complete", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "check":
        if rest:
            parser.error(f"unexpected arguments: {' '.join(rest)}")
        return check(os.environ)
    from otel_integration.devtools import receive

    return receive.main(rest)


if __name__ == "__main__":
    sys.exit(main())

