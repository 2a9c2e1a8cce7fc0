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
from collections.abc import MutableMapping
from typing import Any

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.environment_variables import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_PROPAGATORS,
    OTEL_TRACES_EXPORTER,
)
from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_PROTOCOL
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_integration._propagation import RequestIdPropagator
from otel_integration._redaction import Redactor
from otel_integration._scrubbing import Scrubber, ScrubbingLogExporter, ScrubbingSpanExporter
from otel_integration._tracecontext import W3CTraceContextPropagator
from otel_integration._settings import Settings, fix_otel_environment
from otel_integration import _export_gate, _shutdown
from otel_integration._client.tracing import AttemptSpanProcessor

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


def apply_environment_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Our defaults for the variables the user did not set; bad standard values replaced (one ERROR each)."""
    user_set_propagators = OTEL_PROPAGATORS in environ
    settings = Settings.from_env(environ, log=False)
    for name, value in DEFAULTS.items():
        if name == OTEL_PROPAGATORS and not settings.enabled:
            value = "tracecontext,baggage"  # the master switch is off: no X-Request-ID anywhere
        environ.setdefault(name, value)
    fix_otel_environment(environ)
    if not user_set_propagators:
        # opentelemetry.propagate read OTEL_PROPAGATORS when it was imported,
        # possibly before the default above existed (opentelemetry-python #4679).
        propagate.set_global_textmap(default_propagator(settings))
    else:
        propagate.set_global_textmap(conformant(propagate.get_global_textmap()))


def default_propagator(settings: Settings) -> CompositePropagator:
    propagators: list[TextMapPropagator] = [W3CTraceContextPropagator(), W3CBaggagePropagator()]
    if settings.enabled:
        propagators.append(RequestIdPropagator(settings.request_id_header, settings.request_id_incoming_headers))
    return CompositePropagator(propagators)


def conformant(propagator: TextMapPropagator) -> TextMapPropagator:
    """`propagator` with the SDK's ``tracecontext`` replaced by `W3CTraceContextPropagator` (same format, spec-conformant extract)."""
    if type(propagator) is TraceContextTextMapPropagator:
        return W3CTraceContextPropagator()
    inner = getattr(propagator, "_propagators", None)
    if isinstance(propagator, CompositePropagator) and isinstance(inner, list):
        return CompositePropagator([conformant(p) for p in inner])
    return propagator


class OtelIntegrationDistro(BaseDistro):  # type: ignore[misc]
    """Sets the distro's defaults in the environment before the SDK is built."""

    def _configure(self, **kwargs: object) -> None:
        apply_environment_defaults()
        _state["distro_configured"] = True


class OtelIntegrationConfigurator(_OTelSDKConfigurator):
    """The SDK configurator: the standard one plus our attempt span processor."""

    def _configure(self, **kwargs: Any) -> None:
        processors = list(kwargs.pop("span_processors", None) or [])
        processors.append(AttemptSpanProcessor())
        fix_otel_environment(os.environ)  # under configure() the distro step may not have run
        # The OTLP/HTTP exporters send through the export gate (a dead collector costs no time);
        # what the caller passes for an exporter class wins.
        exporter_args = {**_export_gate.exporter_arguments(), **(kwargs.pop("exporter_args_map", None) or {})}
        # Every exporter sends what the scrubber made of the telemetry (secrets, control characters).
        scrubber = Scrubber(Redactor(Settings.from_env(log=False).redact_query_params))
        span_processor = kwargs.pop("export_span_processor", None) or BatchSpanProcessor
        log_processor = kwargs.pop("export_log_record_processor", None) or BatchLogRecordProcessor
        kwargs["export_span_processor"] = lambda exporter: span_processor(ScrubbingSpanExporter(exporter, scrubber))
        kwargs["export_log_record_processor"] = lambda exporter: log_processor(ScrubbingLogExporter(exporter, scrubber))
        try:
            super()._configure(span_processors=processors, exporter_args_map=exporter_args, **kwargs)  # type: ignore[no-untyped-call]
        except Exception:
            # Whatever the SDK refused, the app must start, and the instrumentations
            # (which record through the global providers) must still load.
            _logger.exception("otel-integration: the OpenTelemetry SDK could not be configured; no telemetry is exported")
        _shutdown.bound_the_exit()
        _shutdown.install_signal_flush()
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
        try:
            # The launcher's own loading code: distro, configurator, instrumentors.
            from opentelemetry.instrumentation.auto_instrumentation import _load

            os.environ.setdefault("OTEL_PYTHON_DISTRO", NAME)
            distro = OtelIntegrationDistro()
            distro.configure()
            OtelIntegrationConfigurator().configure(**configurator_kwargs)  # type: ignore[no-untyped-call]
            _load._load_instrumentors(distro)  # type: ignore[no-untyped-call]
        except Exception:  # telemetry must never take the application down
            _logger.exception("otel-integration: configure() failed; the application runs without (some) telemetry")
