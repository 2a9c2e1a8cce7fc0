"""otel-integration: OpenTelemetry-native correlation and resilience for httpx services.

Under ``opentelemetry-instrument`` nothing needs importing. For programs that
cannot use the launcher::

    import otel_integration

    otel_integration.configure()   # once, before creating httpx clients

Opt-in, with the launcher too: ``otel_integration.validate(response, Model)``
checks a downstream's JSON body against a pydantic model or any callable.

The names below are the public API; modules starting with an underscore are
internal. ``otel_integration.devtools`` holds the developer tools (an OTLP
receiver, the terminal trace view).

Each name is imported when first used: the launcher imports this package
while it loads OpenTelemetry itself (through the ``xrequestid`` propagator's
entry point), so importing everything here would be slower and circular.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_PUBLIC = {
    "AsyncResilientTransport": "otel_integration._client.async_transport",
    "ResilientTransport": "otel_integration._client.sync_transport",
    "OtelIntegrationInstrumentor": "otel_integration._client.instrumentor",
    "instrument_client": "otel_integration._client.instrumentor",
    "configure": "otel_integration._distro",
    "RequestIdPropagator": "otel_integration._propagation",
    "get_request_id": "otel_integration._propagation",
    "set_request_id": "otel_integration._propagation",
    "valid_request_id": "otel_integration._propagation",
    "RequestIdMiddleware": "otel_integration._server.asgi",
    "RequestIdWSGIMiddleware": "otel_integration._server.wsgi",
    "ServerInstrumentor": "otel_integration._server.instrumentor",
    "health_report": "otel_integration._server.health",
    "health_asgi_app": "otel_integration._server.health",
    "health_wsgi_app": "otel_integration._server.health",
    "validate": "otel_integration._validation",
    "IntegrationError": "otel_integration.errors",
    "ServiceUnavailableError": "otel_integration.errors",
    "IntegrationTimeoutError": "otel_integration.errors",
    "AuthenticationError": "otel_integration.errors",
    "ValidationError": "otel_integration.errors",
    "CircuitOpenError": "otel_integration.errors",
    "DownstreamUnhealthyError": "otel_integration.errors",
}
# public names that are another name in their module
_RENAMED = {"health_report": "report", "health_asgi_app": "asgi_endpoint", "health_wsgi_app": "wsgi_endpoint"}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'otel_integration' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


if TYPE_CHECKING:
    from otel_integration._client.async_transport import AsyncResilientTransport
    from otel_integration._client.instrumentor import OtelIntegrationInstrumentor, instrument_client
    from otel_integration._client.sync_transport import ResilientTransport
    from otel_integration._distro import configure
    from otel_integration._propagation import RequestIdPropagator, get_request_id, set_request_id, valid_request_id
    from otel_integration._server.asgi import RequestIdMiddleware
    from otel_integration._server.health import asgi_endpoint as health_asgi_app
    from otel_integration._server.health import report as health_report
    from otel_integration._server.health import wsgi_endpoint as health_wsgi_app
    from otel_integration._server.instrumentor import ServerInstrumentor
    from otel_integration._server.wsgi import RequestIdWSGIMiddleware
    from otel_integration._validation import validate
    from otel_integration.errors import (
        AuthenticationError,
        CircuitOpenError,
        DownstreamUnhealthyError,
        IntegrationError,
        IntegrationTimeoutError,
        ServiceUnavailableError,
        ValidationError,
    )
