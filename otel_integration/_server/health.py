"""The dependency health endpoint: what this service's downstreams look like from here.

Served by the server middleware at ``OTEL_INTEGRATION_HEALTH_PATH`` (e.g.
``/healthz``; off when empty), or mounted by hand (`asgi_endpoint`,
`wsgi_endpoint`). It answers::

    {"status": "healthy" | "degraded" | "unhealthy",
     "dependencies": {
       "extract": {"status": "healthy", "breaker": "closed",
                   "latency_ms": {"last": 12.3, "p95": 20.1},
                   "last_error_type": null}}}

- a dependency is ``unhealthy`` when its circuit breaker is open or its active
  probe fails, ``degraded`` when its breaker is half-open, else ``healthy``;
- the service is ``unhealthy`` per ``OTEL_INTEGRATION_HEALTH_UNHEALTHY_WHEN``
  (``all_open``: every dependency is unhealthy; ``any_open``: one is;
  ``never``), else ``degraded`` when any dependency is not healthy;
- HTTP 200 for healthy and degraded, 503 for unhealthy.

Dependencies listed: every logical name of ``OTEL_INTEGRATION_SERVICES``,
every probed name, and every downstream the resilience layer holds (bounded
by ``OTEL_INTEGRATION_MAX_DOWNSTREAMS``). Everything is read from the layer
(`ResilienceLayer`) when the endpoint is asked, so breaker states include the
time-based ones: latency and last error are those of the last `WINDOW`
attempts per downstream, recorded by the call core.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from otel_integration._client import layer as layers
from otel_integration._client.downstreams import WINDOW
from otel_integration._client.layer import ResilienceLayer

__all__ = ["WINDOW", "asgi_endpoint", "report", "wsgi_endpoint"]


def report(layer: ResilienceLayer | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON document) of the endpoint for ``layer`` (default: the instrumentation's)."""
    layer = layer or layers.active()
    if layer is None:
        return 200, {"status": "healthy", "dependencies": {}}
    settings = layer.settings
    held = {downstream.key: downstream for downstream in layer.downstreams}
    probes = layer.downstreams.probes
    dependencies: dict[str, Any] = {}
    for name in dict.fromkeys([*settings.services, *probes, *held]):
        downstream = held.get(name)
        breaker = downstream.breaker.state() if downstream is not None else "closed"
        entry: dict[str, Any] = {
            "status": "healthy",
            "breaker": breaker,
            "latency_ms": downstream.stats.latency() if downstream else {"last": None, "p95": None},
            "last_error_type": downstream.stats.last_error_type if downstream else None,
        }
        probe = probes.get(name)
        if probe is not None:
            entry["probe"] = {None: "unknown", True: "passing", False: "failing"}[probe.status()]
        if breaker == "open" or entry.get("probe") == "failing":
            entry["status"] = "unhealthy"
        elif breaker == "half_open":
            entry["status"] = "degraded"
        dependencies[name] = entry
    return _overall(settings.health_unhealthy_when, dependencies)


def _overall(rule: str, dependencies: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    statuses = [d["status"] for d in dependencies.values()]
    unhealthy = [s == "unhealthy" for s in statuses]
    if (rule == "any_open" and any(unhealthy)) or (rule == "all_open" and unhealthy and all(unhealthy)):
        status = "unhealthy"
    elif any(s != "healthy" for s in statuses):
        status = "degraded"
    else:
        status = "healthy"
    return (503 if status == "unhealthy" else 200), {"status": status, "dependencies": dependencies}


def _body(layer: ResilienceLayer | None) -> tuple[int, bytes]:
    status, document = report(layer)
    return status, json.dumps(document, separators=(",", ":")).encode()


async def asgi_endpoint(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any], layer: ResilienceLayer | None = None) -> None:
    """The endpoint as an ASGI app."""
    status, body = _body(layer)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


def wsgi_endpoint(environ: dict[str, Any], start_response: Callable[..., Any], layer: ResilienceLayer | None = None) -> list[bytes]:
    """The endpoint as a WSGI app."""
    status, body = _body(layer)
    reason = "OK" if status == 200 else "Service Unavailable"
    start_response(
        f"{status} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
    )
    return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]
