"""The distro and configurator that `opentelemetry-instrument` loads.

`opentelemetry-instrument` runs, in this order: the distro's `configure()`
(our defaults go into the environment), the configurator (the SDK is built:
tracer, meter and logger providers with OTLP exporters), then every
`opentelemetry_instrumentor` entry point (upstream httpx, ASGI, ... and ours).

`configure()` does the same for programs that cannot use the launcher.
"""

from __future__ import annotations

import logging
import os
import threading

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.environment_variables import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_PROPAGATORS,
    OTEL_TRACES_EXPORTER,
)
from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_PROTOCOL
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_integration.propagation import RequestIdPropagator
from otel_integration.settings import Settings
from otel_integration.tracing import AttemptSpanProcessor

_logger = logging.getLogger(__name__)

NAME = "otel_integration"
OTEL_SEMCONV_STABILITY_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"

# Applied with setdefault: a variable the user set always wins.
DEFAULTS = {
    OTEL_TRACES_EXPORTER: "otlp",
    OTEL_METRICS_EXPORTER: "otlp",
    OTEL_LOGS_EXPORTER: "otlp",
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
    OTEL_SEMCONV_STABILITY_OPT_IN: "http",
    OTEL_PROPAGATORS: "tracecontext,baggage,xrequestid",
    # The launcher would otherwise pick whichever configurator it finds first.
    "OTEL_PYTHON_CONFIGURATOR": NAME,
}

# Set by `OtelIntegrationDistro._configure` so the instrumentor can tell
# whether another distro was selected instead of ours.
_state = {"distro_configured": False, "sdk_configured": False}
_lock = threading.Lock()


def apply_environment_defaults(environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    user_set_propagators = OTEL_PROPAGATORS in environ
    for name, value in DEFAULTS.items():
        environ.setdefault(name, value)
    settings = Settings.from_env(environ, log=False)
    if not user_set_propagators:
        # opentelemetry.propagate read OTEL_PROPAGATORS when it was imported,
        # possibly before the default above existed (opentelemetry-python #4679).
        propagate.set_global_textmap(default_propagator(settings))


def default_propagator(settings: Settings) -> CompositePropagator:
    return CompositePropagator(
        [
            TraceContextTextMapPropagator(),
            W3CBaggagePropagator(),
            RequestIdPropagator(settings.request_id_header, settings.request_id_incoming_headers),
        ]
    )


class OtelIntegrationDistro(BaseDistro):
    """Sets the distro's defaults in the environment before the SDK is built."""

    def _configure(self, **kwargs: object) -> None:
        apply_environment_defaults()
        _state["distro_configured"] = True


class OtelIntegrationConfigurator(_OTelSDKConfigurator):
    """The SDK configurator: the standard one plus our attempt span processor."""

    def _configure(self, **kwargs: object) -> None:
        processors = list(kwargs.pop("span_processors", None) or [])  # type: ignore[call-overload]
        processors.append(AttemptSpanProcessor())
        super()._configure(span_processors=processors, **kwargs)
        _state["sdk_configured"] = True


def selected_by_launcher() -> bool:
    return _state["distro_configured"]


def configure(**configurator_kwargs: object) -> None:
    """Set up OpenTelemetry and the distro without `opentelemetry-instrument`.

    Call once, early (before creating httpx clients). Equivalent to running
    under the launcher: environment defaults, the SDK with OTLP exporters, and
    every installed instrumentation. Calling it again, or under the launcher,
    does nothing more: no duplicate spans.
    """
    with _lock:
        if _state["sdk_configured"]:
            return
        # The launcher's own loading code: distro, configurator, instrumentors.
        from opentelemetry.instrumentation.auto_instrumentation import _load

        os.environ.setdefault("OTEL_PYTHON_DISTRO", NAME)
        distro = OtelIntegrationDistro()
        distro.configure()
        OtelIntegrationConfigurator().configure(**configurator_kwargs)
        _load._load_instrumentors(distro)
