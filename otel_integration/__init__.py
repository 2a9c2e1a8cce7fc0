"""otel-integration: OpenTelemetry-native correlation and resilience for httpx.

Under ``opentelemetry-instrument`` nothing needs importing. For programs that
cannot use the launcher::

    import otel_integration

    otel_integration.configure()   # once, before creating httpx clients

The names below are the public API; everything else is internal.
"""

from otel_integration.distro import configure
from otel_integration.errors import CircuitOpenError, DownstreamUnhealthyError, IntegrationError
from otel_integration.propagation import get_request_id, set_request_id, valid_request_id
from otel_integration.transport import AsyncResilientTransport, ResilientTransport

__all__ = [
    "AsyncResilientTransport",
    "CircuitOpenError",
    "DownstreamUnhealthyError",
    "IntegrationError",
    "ResilientTransport",
    "configure",
    "get_request_id",
    "set_request_id",
    "valid_request_id",
]
