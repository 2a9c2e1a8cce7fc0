"""The instrumentor that puts every httpx client behind the resilience layer.

Loaded by `opentelemetry-instrument` through the ``opentelemetry_instrumentor``
entry point ``otel_integration_httpx``; disable it with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_integration_httpx``. By hand::

    from otel_integration.instrumentation import OtelIntegrationInstrumentor

    OtelIntegrationInstrumentor().instrument()
    httpx.get("https://example.org")   # request ID, retries, breaker
    OtelIntegrationInstrumentor().uninstrument()

How: httpx asks ``Client._transport_for_url(url)`` for the transport of every
request (the default one, or a mount). We wrap that method on the classes,
so every client gets its transports wrapped on first use, including clients
created before instrumentation, mounted transports and user transports such
as `MockTransport`. The upstream httpx instrumentation wraps
`HTTPTransport.handle_request`, which sits *inside* our transport: it records
one CLIENT span per physical attempt.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection
from typing import Any

import httpx
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from otel_integration import distro
from otel_integration.layer import ResilienceLayer
from otel_integration.settings import Settings
from otel_integration.transport import AsyncResilientTransport, ResilientTransport

_logger = logging.getLogger(__name__)

_WRAPPER_ATTRIBUTE = "_otel_integration_wrapper"

OTHER_DISTRO_WARNING = (
    "otel-integration: another OpenTelemetry distro was selected by opentelemetry-instrument, so the "
    "otel-integration defaults (OTLP over http/protobuf, stable HTTP semantic conventions, the "
    "X-Request-ID propagator, resend counts on spans) are not in force. Set "
    "OTEL_PYTHON_DISTRO=otel_integration and OTEL_PYTHON_CONFIGURATOR=otel_integration, or uninstall "
    "opentelemetry-distro."
)


class OtelIntegrationInstrumentor(BaseInstrumentor):
    layer: ResilienceLayer | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("httpx >= 0.27",)

    def _instrument(self, **kwargs: Any) -> None:
        settings = kwargs.get("settings") or Settings.from_env()
        if _under_launcher() and not distro.selected_by_launcher():
            _logger.warning(OTHER_DISTRO_WARNING)
        if not settings.enabled:
            _logger.info("otel-integration: OTEL_INTEGRATION_ENABLED=false; httpx clients are left as they are")
            return
        layer = ResilienceLayer(
            settings,
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            **({"clock": kwargs["clock"]} if "clock" in kwargs else {}),
        )
        OtelIntegrationInstrumentor.layer = layer
        for hook in _layer_hooks:
            hook(layer)
        wrap_function_wrapper(httpx.Client, "_transport_for_url", _wrap(layer, ResilientTransport))
        wrap_function_wrapper(httpx.AsyncClient, "_transport_for_url", _wrap(layer, AsyncResilientTransport))

    def _uninstrument(self, **kwargs: Any) -> None:
        if OtelIntegrationInstrumentor.layer is None:
            return
        unwrap(httpx.Client, "_transport_for_url")
        unwrap(httpx.AsyncClient, "_transport_for_url")
        OtelIntegrationInstrumentor.layer.breakers.close()
        OtelIntegrationInstrumentor.layer = None


def _under_launcher() -> bool:
    """Whether opentelemetry-instrument started this process (its sitecustomize ran)."""
    module = sys.modules.get("sitecustomize")
    return "auto_instrumentation" in str(getattr(module, "__file__", ""))


# Later parts of the distro (auth forwarding, health probes) register here to
# be handed each new layer.
_layer_hooks: list[Any] = []


def on_new_layer(hook: Any) -> None:
    _layer_hooks.append(hook)


def _wrapper_for(transport: Any, layer: ResilienceLayer, factory: type) -> Any:
    if isinstance(transport, (ResilientTransport, AsyncResilientTransport)):
        return transport  # the user composed it by hand: never wrap twice
    wrapper = factory(transport, layer)
    try:
        setattr(transport, _WRAPPER_ATTRIBUTE, wrapper)
    except AttributeError:
        pass  # a transport with __slots__: a new (stateless) wrapper per request
    return wrapper


def _wrap(layer: ResilienceLayer, factory: type) -> Any:
    """The wrapper of `_transport_for_url`: the client's transport, behind ours."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        transport = wrapped(*args, **kwargs)
        cached = getattr(transport, _WRAPPER_ATTRIBUTE, None)
        if cached is not None and cached.layer is layer:
            return cached
        return _wrapper_for(transport, layer, factory)

    return wrapper
