"""The instrumentor that puts every httpx client behind the resilience layer.

Loaded by `opentelemetry-instrument` through the ``opentelemetry_instrumentor``
entry point ``otel_integration_httpx``; disable it with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_integration_httpx``. By hand::

    from otel_integration import OtelIntegrationInstrumentor

    OtelIntegrationInstrumentor().instrument()
    httpx.get("https://example.org")   # request ID, retries, breaker
    OtelIntegrationInstrumentor().uninstrument()

Or for one client only: ``otel_integration.instrument_client(client)``.

How: httpx asks ``Client._transport_for_url(url)`` for the transport of every
request (the default one, or a mount). We wrap that method on the classes,
so every client gets its transports wrapped on first use, including clients
created before instrumentation, mounted transports and user transports such
as `MockTransport`. The upstream httpx instrumentation wraps
`HTTPTransport.handle_request`, which sits *inside* our transport: it records
one CLIENT span per physical attempt.

The instrumentor also turns on what a client gets from the distro besides
retries: log correlation (`request_id`, `trace_id`, `span_id` on log records),
the active health probes, auth forwarding (both read from the settings by
the layer) and the structured ``raise_for_status()`` (`structured.py`). It never raises: if the layer cannot be built from the settings,
it logs one error and uses the defaults; if that fails too, httpx is left as
it is, and the upstream instrumentations stay on.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection
from typing import Any, TypeVar

import httpx
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from otel_integration import _distro as distro
from otel_integration import _logs as logs
from otel_integration._client import layer as layers
from otel_integration._client import structured, upstream_speedups
from otel_integration._client.async_transport import AsyncResilientTransport
from otel_integration._client.layer import ResilienceLayer
from otel_integration._client.sync_transport import ResilientTransport
from otel_integration._settings import Settings

_logger = logging.getLogger(__name__)

_WRAPPER_ATTRIBUTE = "_otel_integration_wrapper"

OTHER_DISTRO_WARNING = (
    "otel-integration: another OpenTelemetry distro was selected by opentelemetry-instrument, so the "
    "otel-integration defaults (OTLP over http/protobuf, stable HTTP semantic conventions, the "
    "X-Request-ID propagator, resend counts on spans) are not in force. Set "
    "OTEL_PYTHON_DISTRO=otel_integration and OTEL_PYTHON_CONFIGURATOR=otel_integration, or uninstall "
    "opentelemetry-distro."
)

class OtelIntegrationInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    def instrumentation_dependencies(self) -> Collection[str]:
        return ("httpx >= 0.27",)

    def _instrument(self, **kwargs: Any) -> None:
        settings = kwargs.get("settings") or Settings.from_env()
        if _under_launcher() and not distro.selected_by_launcher():
            _logger.warning(OTHER_DISTRO_WARNING)
        if not settings.enabled:
            _logger.info("otel-integration: OTEL_INTEGRATION_ENABLED=false; httpx clients are left as they are")
            return
        try:
            layer = self._layer(settings, kwargs)
        except Exception:
            _logger.exception("otel-integration: could not set up the httpx layer from the settings; using the defaults")
            try:
                layer = self._layer(Settings(), kwargs)
            except Exception:
                _logger.exception("otel-integration: could not set up the httpx layer; httpx clients are left as they are")
                return
        logs.install(settings)
        if settings.upstream_speedups:
            upstream_speedups.install()
        if settings.structured_errors:
            structured.install(layer.redactor)
        layers.set_active(layer)
        wrap_function_wrapper(httpx.Client, "_transport_for_url", _wrap(layer, ResilientTransport))
        wrap_function_wrapper(httpx.AsyncClient, "_transport_for_url", _wrap(layer, AsyncResilientTransport))

    @staticmethod
    def _layer(settings: Settings, kwargs: dict[str, Any]) -> ResilienceLayer:
        extra = {"clock": kwargs["clock"]} if "clock" in kwargs else {}
        return ResilienceLayer(
            settings, tracer_provider=kwargs.get("tracer_provider"), meter_provider=kwargs.get("meter_provider"), **extra
        )

    def _uninstrument(self, **kwargs: Any) -> None:
        layer = layers.active()
        if layer is None:
            return
        unwrap(httpx.Client, "_transport_for_url")
        unwrap(httpx.AsyncClient, "_transport_for_url")
        layers.set_active(None)
        structured.uninstall()
        upstream_speedups.uninstall()
        layer.close()
        logs.uninstall()


def _under_launcher() -> bool:
    """Whether opentelemetry-instrument started this process (its sitecustomize ran)."""
    module = sys.modules.get("sitecustomize")
    return "auto_instrumentation" in str(getattr(module, "__file__", ""))


Transport = TypeVar("Transport", httpx.BaseTransport, httpx.AsyncBaseTransport)


def _wrapper_for(transport: Any, layer: ResilienceLayer, factory: type) -> Any:
    if isinstance(transport, (ResilientTransport, AsyncResilientTransport)) or getattr(transport, "caching", False):
        return transport  # the user composed it by hand, or it is our caching transport: never wrap twice
    wrapper = factory(transport, layer)
    if layer.cache is not None:
        wrapper = _cached(wrapper, layer)
    try:
        setattr(transport, _WRAPPER_ATTRIBUTE, wrapper)
    except AttributeError:
        pass  # a transport with __slots__: a new (stateless) wrapper per request
    return wrapper


def _cached(resilient: Any, layer: ResilienceLayer) -> Any:
    """The resilient transport behind the response cache (outside the retry loop); hishel is imported here."""
    if isinstance(resilient, AsyncResilientTransport):
        from otel_integration._client.async_cache import AsyncCachingTransport

        return AsyncCachingTransport(resilient, layer)
    from otel_integration._client.sync_cache import CachingTransport

    return CachingTransport(resilient, layer)


def _wrap(layer: ResilienceLayer, factory: type) -> Any:
    """The wrapper of `_transport_for_url`: the client's transport, behind ours."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        transport = wrapped(*args, **kwargs)
        cached = getattr(transport, _WRAPPER_ATTRIBUTE, None)
        if cached is not None and cached.layer is layer:
            return cached
        return _wrapper_for(transport, layer, factory)

    return wrapper


Client = TypeVar("Client", httpx.Client, httpx.AsyncClient)


def instrument_client(client: Client, layer: ResilienceLayer | None = None) -> Client:
    """Put one client's transports (its default and its mounts) behind the resilience layer.

    For programs that want the layer on some clients only, without
    `OtelIntegrationInstrumentor`. ``layer``: the instrumentation's, else one
    built once from the ``OTEL_INTEGRATION_*`` environment. Returns the client.
    """
    layer = layer or layers.current()
    factory: type = AsyncResilientTransport if isinstance(client, httpx.AsyncClient) else ResilientTransport
    client._transport = _wrapper_for(client._transport, layer, factory)
    client._mounts = {
        pattern: None if transport is None else _wrapper_for(transport, layer, factory)
        for pattern, transport in client._mounts.items()
    }
    return client
