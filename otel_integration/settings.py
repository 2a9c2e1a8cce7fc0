"""Every `OTEL_INTEGRATION_*` setting, its default and its meaning, in one place.

`Settings.from_env()` parses the environment once. A bad value never raises:
it is reported as one ERROR log line naming the variable, the value (masked
when it may hold a secret) and what was expected, and the default is used.

    >>> s = Settings.from_env({"OTEL_INTEGRATION_RETRY_ATTEMPTS": "5"})
    >>> s.retry_attempts
    5
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_logger = logging.getLogger(__name__)

PREFIX = "OTEL_INTEGRATION_"


# --- value parsers: each raises ValueError on bad input -----------------------


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < minimum:
            raise ValueError
        return value

    return parse


def _seconds(raw: str) -> float:
    value = float(raw.strip())
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        raise ValueError
    return value


def _fraction(raw: str) -> float:
    value = float(raw.strip())
    if not 0 <= value <= 10:
        raise ValueError
    return value


def _status_codes(raw: str) -> frozenset[int]:
    """`429,502-504,5xx` -> the set of codes."""
    codes: set[int] = set()
    for part in raw.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if re.fullmatch(r"[1-5]xx", part):
            base = int(part[0]) * 100
            codes.update(range(base, base + 100))
        elif re.fullmatch(r"\d{3}-\d{3}", part):
            low, high = (int(p) for p in part.split("-"))
            if not 100 <= low <= high <= 599:
                raise ValueError
            codes.update(range(low, high + 1))
        elif re.fullmatch(r"\d{3}", part) and 100 <= int(part) <= 599:
            codes.add(int(part))
        else:
            raise ValueError
    return frozenset(codes)


_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


def _header_name(raw: str) -> str:
    value = raw.strip()
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError
    return value


def _header_names(raw: str) -> tuple[str, ...]:
    names = tuple(_header_name(p) for p in raw.split(",") if p.strip())
    if not names:
        raise ValueError
    return names


def _names(raw: str) -> frozenset[str]:
    names = {p.strip().lower() for p in raw.split(",") if p.strip()}
    for name in names:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._:-]{0,252}", name):
            raise ValueError
    return frozenset(names)


def _services(raw: str) -> dict[str, str]:
    """`extract=http://extract:8081,catalog=catalog:8082` -> {name: "host:port"}."""
    services: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, target = part.partition("=")
        name, target = name.strip().lower(), target.strip()
        if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name) or not target:
            raise ValueError
        services[name] = downstream_key_from_target(target)
    return services


def downstream_key_from_target(target: str) -> str:
    """`http://extract:8081/x` or `extract:8081` -> `extract:8081` (default ports filled in)."""
    if "://" not in target:
        target = "http://" + target
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname.lower()}:{port}"


def _storage(raw: str) -> str:
    value = raw.strip()
    if value in ("", "memory"):
        return "memory"
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ValueError
    return value


def _path(raw: str) -> str:
    value = raw.strip()
    if value == "":
        return ""
    if not re.fullmatch(r"/[A-Za-z0-9._~/-]{0,200}", value):
        raise ValueError
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError
        return value

    return parse


def mask_secret_url(url: str) -> str:
    """`redis://user:pw@h:6379/0` -> `redis://user:***@h:6379/0`."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


# --- the settings ----------------------------------------------------------------


def _option(
    env: str, default: Any, parse: Callable[[str], Any], expected: str, doc: str, *, secret: bool = False
) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=_metadata(env, parse, expected, doc, secret))
    return field(default=default, metadata=_metadata(env, parse, expected, doc, secret))


def _metadata(env: str, parse: Callable[[str], Any], expected: str, doc: str, secret: bool) -> dict[str, Any]:
    return ({"env": PREFIX + env, "parse": parse, "expected": expected, "doc": doc, "secret": secret}
    )


@dataclass(frozen=True)
class Settings:
    """The distro's configuration. Field order is the order of the README table."""

    enabled: bool = _option(
        "ENABLED", True, _bool, "true or false",
        "Master switch for the distro's own httpx layer (request ID, retries, breaker).",
    )
    request_id_header: str = _option(
        "REQUEST_ID_HEADER", "X-Request-ID", _header_name, "an HTTP header name",
        "Header that carries the correlation ID on outgoing requests and responses.",
    )
    request_id_incoming_headers: tuple[str, ...] = _option(
        "REQUEST_ID_INCOMING_HEADERS", ("X-Request-ID", "X-Correlation-ID", "X-Trace-ID"), _header_names,
        "a comma-separated list of header names",
        "Headers searched, in order, for an incoming correlation ID; the first valid one wins.",
    )
    retry_attempts: int = _option(
        "RETRY_ATTEMPTS", 3, _int_at_least(1), "an integer >= 1",
        "Attempts per logical call, the first included (1 disables retries).",
    )
    retry_initial_wait: float = _option(
        "RETRY_INITIAL_WAIT", 0.1, _seconds, "seconds >= 0", "First backoff before jitter.",
    )
    retry_max_wait: float = _option(
        "RETRY_MAX_WAIT", 5.0, _seconds, "seconds >= 0",
        "Upper bound of one backoff, Retry-After included.",
    )
    retry_jitter: float = _option(
        "RETRY_JITTER", 1.0, _seconds, "seconds >= 0", "Maximum random jitter added to each backoff.",
    )
    retry_deadline: float = _option(
        "RETRY_DEADLINE", 30.0, _seconds, "seconds >= 0",
        "Overall deadline of one logical call; every wait is clipped to what is left (0: none).",
    )
    retry_status_codes: frozenset[int] = _option(
        "RETRY_STATUS_CODES", frozenset({429, 502, 503, 504}), _status_codes,
        "HTTP status codes, ranges or classes like 429,502-504,5xx",
        "Responses that are retried (only for idempotent requests).",
    )
    retry_budget_ratio: float = _option(
        "RETRY_BUDGET_RATIO", 0.2, _fraction, "a number between 0 and 10",
        "Retries allowed per downstream as a fraction of requests (0.2 = at most +20% load).",
    )
    retry_budget_min_per_second: float = _option(
        "RETRY_BUDGET_MIN_PER_SECOND", 10.0, _seconds, "a number >= 0",
        "Retries per second always allowed per downstream, so low-traffic clients still retry.",
    )
    breaker_threshold: int = _option(
        "BREAKER_THRESHOLD", 5, _int_at_least(1), "an integer >= 1",
        "Consecutive failed attempts that open a downstream's circuit breaker.",
    )
    breaker_open_seconds: float = _option(
        "BREAKER_OPEN_SECONDS", 30.0, _seconds, "seconds >= 0",
        "How long an open breaker fails calls fast before letting a trial call through.",
    )
    breaker_half_open_calls: int = _option(
        "BREAKER_HALF_OPEN_CALLS", 1, _int_at_least(1), "an integer >= 1",
        "Concurrent trial calls admitted while half-open.",
    )
    breaker_failure_status_codes: frozenset[int] = _option(
        "BREAKER_FAILURE_STATUS_CODES", frozenset(range(500, 600)), _status_codes,
        "HTTP status codes, ranges or classes like 5xx,429",
        "Responses that count as breaker failures (transport errors always do; 4xx never by default).",
    )
    breaker_storage: str = _option(
        "BREAKER_STORAGE", "memory", _storage, "memory or a redis://host:port/db URL",
        "Where breaker state lives; Redis shares it across processes and replicas.", secret=True,
    )
    max_downstreams: int = _option(
        "MAX_DOWNSTREAMS", 1000, _int_at_least(1), "an integer >= 1",
        "Bound on per-downstream state (breakers, budgets); least recently used is evicted.",
    )
    services: dict[str, str] = _option(
        "SERVICES", {}, _services, "name=URL pairs separated by commas",
        "Logical downstream names, e.g. extract=http://extract:8081; sets peer.service and keys state by name.",
    )
    health_path: str = _option(
        "HEALTH_PATH", "", _path, "an URL path such as /healthz, or empty",
        "Serve the dependency health endpoint at this path on ASGI apps (empty: off).",
    )
    health_probes: dict[str, str] = _option(
        "HEALTH_PROBES", {}, lambda raw: _probe_urls(raw), "name=URL pairs separated by commas",
        "Active health probe URL per downstream; a failing probe makes calls fail fast.",
    )
    health_probe_ttl: float = _option(
        "HEALTH_PROBE_TTL", 30.0, _seconds, "seconds >= 0",
        "A probe result is cached this long.",
    )
    health_unhealthy_when: str = _option(
        "HEALTH_UNHEALTHY_WHEN", "all_open", _choice("all_open", "any_open", "never"),
        "all_open, any_open or never",
        "When the health endpoint reports unhealthy (503) rather than degraded (200).",
    )
    auth_forward_to: frozenset[str] = _option(
        "AUTH_FORWARD_TO", frozenset(), _names, "logical names or host[:port] values, comma-separated",
        "Forward the incoming Authorization header only to these downstreams (empty: off).",
    )
    log_correlation: bool = _option(
        "LOG_CORRELATION", True, _bool, "true or false",
        "Add request_id, trace_id and span_id to every stdlib log record.",
    )
    log_format: bool = _option(
        "LOG_FORMAT", True, _bool, "true or false",
        "Install a default log format showing those IDs when the app configured no logging.",
    )
    # OTEL_INTEGRATION_SERVICE_<NAME>_<SETTING>: per-service override of any RETRY_* or BREAKER_*
    # setting (not BREAKER_STORAGE) for a logical name of OTEL_INTEGRATION_SERVICES, e.g.
    # OTEL_INTEGRATION_SERVICE_EXTRACT_RETRY_ATTEMPTS=5. Parsed by `_service_overrides`; not a
    # variable of its own, so not in `options()`.
    service_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_service(self, name: str | None) -> Settings:
        """The settings of one logical downstream: the global ones plus its overrides."""
        overrides = self.service_overrides.get(name or "")
        return dataclasses.replace(self, **overrides) if overrides else self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, log: bool = True) -> Settings:
        settings, problems = cls.parse(os.environ if environ is None else environ)
        if log:
            for problem in problems:
                _logger.error("%s", problem)
        return settings

    @classmethod
    def parse(cls, environ: Mapping[str, str]) -> tuple[Settings, list[str]]:
        """Parse `environ`; return the settings and one message per bad value."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in options():
            env = f.metadata["env"]
            raw = environ.get(env)
            if raw is None or not raw.strip():
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except (ValueError, TypeError):
                shown = _shown(raw, secret=f.metadata["secret"])
                problems.append(
                    f"{env}={shown} is invalid: expected {f.metadata['expected']}; "
                    f"using the default {describe_default(f)}"
                )
        overrides = _service_overrides(environ, values.get("services", {}), problems)
        if overrides:
            values["service_overrides"] = overrides
        for env in sorted(k for k in environ if k.startswith(PREFIX)):
            if env not in _KNOWN_VARIABLES and not env.startswith(SERVICE_PREFIX):
                problems.append(f"{env} is not a known setting; it is ignored")
        return cls(**values), problems


SERVICE_PREFIX = PREFIX + "SERVICE_"


def _overridable() -> list[dataclasses.Field]:
    return [
        f for f in options()
        if f.name.startswith(("retry_", "breaker_")) and f.name != "breaker_storage"
    ]


def _service_overrides(
    environ: Mapping[str, str], services: Mapping[str, str], problems: list[str]
) -> dict[str, dict[str, Any]]:
    """`OTEL_INTEGRATION_SERVICE_<NAME>_<SETTING>` variables, validated like the global ones."""
    by_env_name = {name.upper().replace("-", "_"): name for name in services}
    fields = sorted(_overridable(), key=lambda f: -len(f.name))  # longest suffix first
    overrides: dict[str, dict[str, Any]] = {}
    for env in sorted(k for k in environ if k.startswith(SERVICE_PREFIX)):
        rest = env[len(SERVICE_PREFIX):]
        raw = environ[env]
        match = next((f for f in fields if rest.endswith("_" + f.name.upper())), None)
        if match is None:
            problems.append(f"{env} is not a known setting; it is ignored")
            continue
        service = by_env_name.get(rest[: -len(match.name) - 1])
        if service is None:
            problems.append(
                f"{env} names no service of {PREFIX}SERVICES "
                f"({','.join(sorted(services)) or 'none configured'}); it is ignored"
            )
            continue
        if not raw.strip():
            continue
        try:
            overrides.setdefault(service, {})[match.name] = match.metadata["parse"](raw)
        except (ValueError, TypeError):
            shown = _shown(raw, secret=match.metadata["secret"])
            problems.append(
                f"{env}={shown} is invalid: expected {match.metadata['expected']}; "
                f"using the global {match.metadata['env']} value"
            )
    return overrides


def _probe_urls(raw: str) -> dict[str, str]:
    probes: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, url = part.partition("=")
        name, url = name.strip().lower(), url.strip()
        parts = urlsplit(url)
        if not sep or not name or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError
        probes[name] = url
    return probes


def _shown(raw: str, *, secret: bool) -> str:
    """A bad value as it may appear in a log line: bounded, printable, secrets masked."""
    if secret:
        raw = mask_secret_url(raw)
    cleaned = "".join(c if c.isprintable() else "?" for c in raw[:80])
    suffix = "..." if len(raw) > 80 else ""
    return repr(cleaned + suffix)


def describe_default(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if isinstance(value, frozenset):
        return _describe_codes(value) if all(isinstance(v, int) for v in value) else ",".join(sorted(value)) or "(empty)"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "(empty)"
    return str(value)


def _describe_codes(codes: frozenset[int]) -> str:
    if not codes:
        return "(empty)"
    for klass in range(1, 6):
        if set(range(klass * 100, klass * 100 + 100)) == set(codes):
            return f"{klass}xx"
    return ",".join(str(c) for c in sorted(codes))


def options() -> list[dataclasses.Field]:
    """The settings' fields, in documentation order."""
    return [f for f in dataclasses.fields(Settings) if "env" in f.metadata]


_KNOWN_VARIABLES = frozenset(f.metadata["env"] for f in options())
