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
import functools
import importlib.util
import logging
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_logger = logging.getLogger(__name__)

PREFIX = "OTEL_INTEGRATION_"


# --- value parsers: each raises ValueError on bad input -----------------------
#
# Every bound is stated here once. A value these accept works at runtime
# (tests/test_settings.py checks that property for every variable).

# Plain decimals with ASCII digits only: no "1e308", "nan", "inf", "1_000", "٣" or "５".
_DECIMAL = re.compile(r"(?:[0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})", re.ASCII)
_INTEGER = re.compile(r"[0-9]{1,9}", re.ASCII)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = raw.strip()
        if not _INTEGER.fullmatch(value) or not low <= int(value) <= high:
            raise ValueError
        return int(value)

    return parse


def _number(low: float, high: float, *, above_low: bool = False) -> Callable[[str], float]:
    """A decimal in [low, high] (or (low, high] with ``above_low``)."""

    def parse(raw: str) -> float:
        value = raw.strip()
        if not _DECIMAL.fullmatch(value):
            raise ValueError
        number = float(value)
        if number > high or number < low or (above_low and number == low):
            raise ValueError
        return number

    return parse


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


_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}", re.ASCII)
# Names a correlation ID must not take: framing and hop-by-hop headers (every call
# would break), trace context (it would be overwritten), credentials (a token
# would become the ID: echoed, logged, sent on).
RESERVED_HEADERS = frozenset({
    "connection", "content-encoding", "content-length", "content-type", "expect", "host", "keep-alive",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "traceparent", "tracestate", "baggage",
    "authorization", "proxy-authorization", "cookie", "set-cookie",
})


def _header_name(raw: str) -> str:
    value = raw.strip()
    if not _HEADER_NAME.fullmatch(value) or value.lower() in RESERVED_HEADERS:
        raise ValueError
    return value


def _header_names(raw: str) -> tuple[str, ...]:
    names = tuple(_header_name(p) for p in raw.split(",") if p.strip())
    if not names or len(names) > 8:
        raise ValueError
    return names


ASGI_INTERNAL_SPANS = ("receive", "send")


def _asgi_internal_spans(raw: str) -> frozenset[str]:
    """`receive,send` -> {"receive", "send"}; `none` -> the empty set."""
    names = {p.strip().lower() for p in raw.split(",") if p.strip()}
    if names == {"none"}:
        return frozenset()
    if not names or not names <= set(ASGI_INTERNAL_SPANS):
        raise ValueError
    return frozenset(names)


def _names(raw: str) -> frozenset[str]:
    names = {p.strip().lower() for p in raw.split(",") if p.strip()}
    for name in names:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._:-]{0,252}", name):
            raise ValueError
    return frozenset(names)


def _parameter_names(raw: str) -> frozenset[str]:
    """`session_key, X-Signature` -> {"session_key", "x-signature"}: URL parameter names, matched normalised."""
    names = {p.strip() for p in raw.split(",") if p.strip()}
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9%._~!$'()*+:@/?-]{1,64}", name, re.ASCII):
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
    """``memory``, ``redis[s]://[user:password@]host[:port][/db]`` or ``unix:///path/to/socket[?db=N]``."""
    value = raw.strip()
    if value in ("", "memory"):
        return "memory"
    parts = urlsplit(value)
    if parts.scheme in ("redis", "rediss"):
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
        if not parts.hostname or not re.fullmatch(r"/?[0-9]{0,5}", parts.path, re.ASCII):
            raise ValueError
    elif parts.scheme == "unix":
        if not parts.path or parts.netloc:
            raise ValueError
    else:
        raise ValueError
    if parts.query and not re.fullmatch(r"db=[0-9]{1,5}", parts.query, re.ASCII):
        raise ValueError
    return value


def _cache(raw: str) -> str:
    """``off``, ``memory``, ``sqlite:///absolute/path.db`` or a Redis URL as `_storage` takes it."""
    value = raw.strip()
    if value.lower() in ("", "off"):
        return "off"
    if value.lower() == "memory":
        return "memory"
    if value.startswith("sqlite://"):
        # sqlite:///var/cache/app.db: an absolute path, so the file does not depend on the working directory.
        path = value[len("sqlite://"):]
        if not re.fullmatch(r"/[A-Za-z0-9._~/-]{0,250}", path) or path.endswith("/") or "/../" in path + "/":
            raise ValueError
        return value
    return _storage(value)  # a Redis URL, or ValueError


def cache_available() -> bool:
    """Whether hishel (the ``[cache]`` extra) is installed."""
    return importlib.util.find_spec("hishel") is not None


def redis_client_available() -> bool:
    """Whether the redis client (the ``[redis]`` extra) is installed."""
    return importlib.util.find_spec("redis") is not None


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
        "Master switch: false leaves httpx, the server frameworks and the propagators as they are (no X-Request-ID).",
    )
    request_id_header: str = _option(
        "REQUEST_ID_HEADER", "X-Request-ID", _header_name,
        "an HTTP header name that is not a framing, hop-by-hop, trace-context or credential header",
        "Header that carries the correlation ID on outgoing requests and responses.",
    )
    request_id_incoming_headers: tuple[str, ...] = _option(
        "REQUEST_ID_INCOMING_HEADERS", ("X-Request-ID", "X-Correlation-ID", "X-Trace-ID"), _header_names,
        "up to 8 comma-separated header names, none a framing, hop-by-hop, trace-context or credential header",
        "Headers searched, in order, for an incoming correlation ID; the first valid one wins.",
    )
    asgi_internal_spans: frozenset[str] = _option(
        "ASGI_INTERNAL_SPANS", frozenset(), _asgi_internal_spans, "receive, send or receive,send (or none)",
        "The upstream ASGI middleware's INTERNAL spans kept for Starlette, FastAPI and plain ASGI apps under the "
        "launcher: `http receive` per message read, `http send` per message sent (empty: only the SERVER span).",
    )
    timeout: float = _option(
        "TIMEOUT", 0.0, _number(0, 3600), "seconds from 0 to 3600",
        "Timeout of each attempt (connect, read, write, pool) for requests with httpx's default one "
        "(0: httpx's own, 5 s).",
    )
    retry_attempts: int = _option(
        "RETRY_ATTEMPTS", 3, _integer(1, 100), "an integer from 1 to 100",
        "Attempts per logical call, the first included (1 disables retries).",
    )
    retry_initial_wait: float = _option(
        "RETRY_INITIAL_WAIT", 0.1, _number(0, 3600), "seconds from 0 to 3600", "First backoff before jitter.",
    )
    retry_max_wait: float = _option(
        "RETRY_MAX_WAIT", 5.0, _number(0, 3600), "seconds from 0 to 3600",
        "Longest wait before a retry; a Retry-After asking for longer means no retry.",
    )
    retry_jitter: float = _option(
        "RETRY_JITTER", 1.0, _number(0, 3600), "seconds from 0 to 3600", "Maximum random jitter added to each backoff.",
    )
    retry_deadline: float = _option(
        "RETRY_DEADLINE", 30.0, _number(0, 86400), "seconds from 0 to 86400",
        "Overall deadline of one logical call: no retry starts at or after it (0: none).",
    )
    retry_status_codes: frozenset[int] = _option(
        "RETRY_STATUS_CODES", frozenset({429, 502, 503, 504}), _status_codes,
        "HTTP status codes, ranges or classes like 429,502-504,5xx",
        "Responses that are retried (only for idempotent requests).",
    )
    retry_budget_ratio: float = _option(
        "RETRY_BUDGET_RATIO", 0.2, _number(0, 10), "a number from 0 to 10",
        "Retries a downstream's calls earn, per call, within the budget's 10 s window (0.2: +20%).",
    )
    retry_budget_min_per_second: float = _option(
        "RETRY_BUDGET_MIN_PER_SECOND", 10.0, _number(0, 10000), "a number from 0 to 10000",
        "Retries per second a downstream's budget allows on top, so low-traffic clients still retry.",
    )
    breaker_threshold: int = _option(
        "BREAKER_THRESHOLD", 5, _integer(1, 1_000_000), "an integer from 1 to 1000000",
        "Consecutive failed attempts that open a downstream's circuit breaker.",
    )
    breaker_open_seconds: float = _option(
        "BREAKER_OPEN_SECONDS", 30.0, _number(0, 86400, above_low=True), "seconds above 0, at most 86400",
        "How long an open breaker fails calls fast before letting a trial call through.",
    )
    breaker_half_open_calls: int = _option(
        "BREAKER_HALF_OPEN_CALLS", 1, _integer(1, 1000), "an integer from 1 to 1000",
        "Concurrent trial calls admitted while half-open (per process).",
    )
    breaker_failure_status_codes: frozenset[int] = _option(
        "BREAKER_FAILURE_STATUS_CODES", frozenset(range(500, 600)), _status_codes,
        "HTTP status codes, ranges or classes like 5xx,429",
        "Responses that count as breaker failures (transport errors always do; 4xx never by default).",
    )
    breaker_storage: str = _option(
        "BREAKER_STORAGE", "memory", _storage, "memory or a redis://host:port/db, rediss:// or unix:// URL",
        "Where breaker state lives; Redis shares it across processes and replicas.", secret=True,
    )
    cache: str = _option(
        "CACHE", "off", _cache,
        "off, memory, sqlite:///absolute/path.db, or a redis://host:port/db, rediss:// or unix:// URL",
        "Cache GET and HEAD responses (RFC 9111, shared-cache rules, with hishel); requests carrying "
        "credentials are never cached.", secret=True,
    )
    cache_ttl: float = _option(
        "CACHE_TTL", 0.0, _number(0, 86400 * 365), "seconds from 0 to 31536000",
        "Freshness given to cached responses with no Cache-Control and no Expires (0: none, they are only "
        "kept for stale-if-error); per service, e.g. 300, 600 or 900.",
    )
    cache_max_stale: float = _option(
        "CACHE_MAX_STALE", 300.0, _number(0, 86400 * 365), "seconds from 0 to 31536000",
        "Stale-if-error: a GET whose call fails (breaker open, probe failing, error or 500/502/503/504 after "
        "the retries) gets the stored response if it has been stale for less than this (0: never).",
    )
    max_downstreams: int = _option(
        "MAX_DOWNSTREAMS", 1000, _integer(1, 1_000_000), "an integer from 1 to 1000000",
        "Bound on per-downstream state (breakers, budgets, health); least recently used is evicted.",
    )
    services: dict[str, str] = _option(
        "SERVICES", {}, _services, "name=URL pairs separated by commas",
        "Logical downstream names, e.g. extract=http://extract:8081; sets peer.service and keys state by name.",
    )
    health_path: str = _option(
        "HEALTH_PATH", "", _path, "an URL path such as /healthz, or empty",
        "Serve the dependency health endpoint at this path on the service's ASGI and WSGI apps (empty: off).",
    )
    health_probes: dict[str, str] = _option(
        "HEALTH_PROBES", {}, lambda raw: _probe_urls(raw), "name=URL pairs separated by commas",
        "Active health probe URL per downstream; a failing probe makes calls fail fast.",
    )
    health_probe_ttl: float = _option(
        "HEALTH_PROBE_TTL", 30.0, _number(0, 86400), "seconds from 0 to 86400",
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
    redact_query_params: frozenset[str] = _option(
        "REDACT_QUERY_PARAMS", frozenset(), _parameter_names, "parameter names separated by commas",
        "More query and fragment parameters whose values are exported as REDACTED, besides the built-in list.",
    )
    structured_errors: bool = _option(
        "STRUCTURED_ERRORS", True, _bool, "true or false",
        "A call that fails, and raise_for_status(), raise the types of otel_integration.errors "
        "(each also the httpx class); false: httpx's own.",
    )
    upstream_speedups: bool = _option(
        "UPSTREAM_SPEEDUPS", True, _bool, "true or false",
        "Replace per-request helpers of the upstream instrumentations (httpx header normalisation, "
        "ASGI header lookup, WSGI header capture, method sanitising, the SERVER span's start attributes "
        "validated twice) with cheaper ones giving the same "
        "results; false: leave them as they are.",
    )
    log_correlation: bool = _option(
        "LOG_CORRELATION", True, _bool, "true or false",
        "Add request_id, trace_id and span_id to every stdlib log record.",
    )
    log_format: bool = _option(
        "LOG_FORMAT", True, _bool, "true or false",
        "Install a default log format showing those IDs when the app configured no logging.",
    )
    # OTEL_INTEGRATION_SERVICE_<NAME>_<SETTING>: per-service override of TIMEOUT, CACHE_TTL,
    # CACHE_MAX_STALE or any RETRY_* or BREAKER_* setting (not BREAKER_STORAGE) for a logical name of OTEL_INTEGRATION_SERVICES, e.g.
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
        storage = values.get("breaker_storage", "memory")
        if storage != "memory" and not redis_client_available():
            problems.append(
                f"{PREFIX}BREAKER_STORAGE={_shown(storage, secret=True)} needs the redis client: "
                "pip install 'otel-integration[redis]'; breakers keep their state in memory"
            )
        cache = values.get("cache", "off")
        if cache != "off" and not cache_available():
            problems.append(
                f"{PREFIX}CACHE={_shown(cache, secret=True)} needs hishel: "
                "pip install 'otel-integration[cache]'; responses are not cached"
            )
        elif cache.startswith(("redis", "rediss", "unix")) and not redis_client_available():
            problems.append(
                f"{PREFIX}CACHE={_shown(cache, secret=True)} needs the redis client: "
                "pip install 'otel-integration[cache,redis]'; responses are not cached"
            )
        for env in sorted(k for k in environ if k.startswith(PREFIX)):
            if env not in _KNOWN_VARIABLES and not env.startswith(SERVICE_PREFIX):
                problems.append(f"{env} is not a known setting; it is ignored")
        return cls(**values), problems


SERVICE_PREFIX = PREFIX + "SERVICE_"


def _overridable() -> list[dataclasses.Field[Any]]:
    return [
        f for f in options()
        if (f.name.startswith(("retry_", "breaker_")) and f.name != "breaker_storage")
        or f.name in ("timeout", "cache_ttl", "cache_max_stale")
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


def describe_default(f: dataclasses.Field[Any]) -> str:
    factory: Callable[[], Any] = f.default_factory  # type: ignore[assignment]
    value = f.default if f.default is not dataclasses.MISSING else factory()
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


def options() -> list[dataclasses.Field[Any]]:
    """The settings' fields, in documentation order."""
    return [f for f in dataclasses.fields(Settings) if "env" in f.metadata]


_KNOWN_VARIABLES = frozenset(f.metadata["env"] for f in options())



# --- the standard OTEL_* variables the distro relies on ------------------------------------
#
# The SDK configurator raises on an unknown protocol or exporter name, and the
# launcher then runs no instrumentation at all (ours and upstream's). The
# distro checks these first and replaces a bad value, with one ERROR each.


@dataclass(frozen=True)
class OtelProblem:
    variable: str
    raw: str
    expected: str
    replacement: str | None  # what the distro uses instead; None: the variable is unset (SDK default)

    def message(self) -> str:
        instead = f"using {self.replacement}" if self.replacement is not None else "using the SDK default"
        return f"{self.variable}={_shown(self.raw, secret=True)} is invalid: expected {self.expected}; {instead}"


OTLP_PROTOCOLS = ("grpc", "http/protobuf")
_SIGNALS = ("TRACES", "METRICS", "LOGS")
DEFAULT_PROPAGATORS = "tracecontext,baggage,xrequestid"


def _entry_point_names(group: str) -> frozenset[str]:
    return frozenset(entry_point.name for entry_point in _installed_entry_points().select(group=group))


@functools.cache
def _installed_entry_points() -> Any:
    """Every installed entry point, read once: each read goes through every distribution's
    metadata, and start-up would otherwise do it for each group, twice. (`SelectableGroups`
    on Python < 3.12, `EntryPoints` after: both `select`.)"""
    from importlib.metadata import entry_points

    return entry_points()


def _valid_endpoint(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def otel_problems(environ: Mapping[str, str]) -> list[OtelProblem]:
    """The standard variables that would stop the SDK or the launcher, with the value used instead."""
    problems: list[OtelProblem] = []
    for variable in ("OTEL_EXPORTER_OTLP_PROTOCOL", *(f"OTEL_EXPORTER_OTLP_{s}_PROTOCOL" for s in _SIGNALS)):
        raw = environ.get(variable)
        if raw is not None and raw.strip() and raw.strip() not in OTLP_PROTOCOLS:
            replacement = "http/protobuf" if variable == "OTEL_EXPORTER_OTLP_PROTOCOL" else None
            problems.append(OtelProblem(variable, raw, "grpc or http/protobuf", replacement))
    for signal in _SIGNALS:
        variable = f"OTEL_{signal}_EXPORTER"
        raw = environ.get(variable)
        if raw is None or not raw.strip() or raw.strip().lower() == "none":
            continue
        known = _entry_point_names(f"opentelemetry_{signal.lower()}_exporter") | {"otlp"}
        if not all(name.strip() in known for name in raw.split(",")):
            problems.append(OtelProblem(variable, raw, f"none or exporter names among {','.join(sorted(known))}", "otlp"))
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", *(f"OTEL_EXPORTER_OTLP_{s}_ENDPOINT" for s in _SIGNALS)):
        raw = environ.get(variable)
        if raw is not None and raw.strip() and not _valid_endpoint(raw.strip()):
            problems.append(OtelProblem(variable, raw, "an http:// or https:// URL", None))
    raw = environ.get("OTEL_PROPAGATORS")
    if raw is not None and raw.strip() and raw.strip().lower() != "none":
        known = _entry_point_names("opentelemetry_propagator")
        if not all(name.strip() in known for name in raw.split(",")):
            problems.append(
                OtelProblem("OTEL_PROPAGATORS", raw, f"none or names among {','.join(sorted(known))}", DEFAULT_PROPAGATORS)
            )
    return problems


def fix_otel_environment(environ: MutableMapping[str, str]) -> list[OtelProblem]:
    """Replace (or unset) every value `otel_problems` finds, logging one ERROR each."""
    problems = otel_problems(environ)
    for problem in problems:
        _logger.error("otel-integration: %s", problem.message())
        if problem.replacement is None:
            environ.pop(problem.variable, None)
        else:
            environ[problem.variable] = problem.replacement
    return problems
