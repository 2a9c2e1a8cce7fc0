"""Failed attempts in ``http.client.request.duration``, exactly once.

The upstream httpx instrumentation records an attempt in
``http.client.request.duration`` only when it got a response: an attempt
that raises (``ConnectError``, ``ReadTimeout``, ...) is re-raised before the
histogram is touched. Error-rate and latency alerts would never see the two
most common failures. The call core records them here instead, into the
upstream's own instrument (the same meter scope, so one series per
downstream), with the attributes the upstream writes on its points:
``http.request.method``, ``server.address``, ``server.port`` (when the URL
names one) and ``error.type`` (the exception's class name, as on its spans).

Exactly once: only when the upstream instrumentation is on and would have
measured the attempt (an `httpx.HTTPTransport`, a URL it does not exclude,
instrumentation not suppressed, stable HTTP conventions), and only with an
upstream release checked not to record failures itself (`VERIFIED_UPSTREAM`;
tests/test_failure_metrics.py checks the installed one). With any other
release nothing is recorded here: a double count would be worse than a gap.

A call refused by the breaker or a failing probe sent nothing: it is not an
HTTP request and is not in this histogram (``http.client.circuit_breaker.rejections``
counts breaker refusals).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
from opentelemetry import metrics
from opentelemetry.metrics import Histogram, MeterProvider

from otel_integration.errors import error_type

_logger = logging.getLogger(__name__)

# Releases of opentelemetry-instrumentation-httpx whose wrapper re-raises an
# attempt's exception before recording its duration.
VERIFIED_UPSTREAM = frozenset({"0.66b0", "0.66b1"})
UPSTREAM_SCOPE = "opentelemetry.instrumentation.httpx"


class FailedAttempts:
    """Records the attempts that ended in an exception, for one meter provider."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        self._meter_provider = meter_provider
        self._lock = threading.Lock()
        self._histogram: Histogram | None = None
        self._excluded: Any = None
        self._ready = False

    def record(self, request: httpx.Request, seconds: float, error: BaseException) -> None:
        if not isinstance(error, Exception):
            return  # cancellation, KeyboardInterrupt: not a failure of the request (nor upstream's)
        histogram = self._instrument()
        if histogram is None:
            return
        from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled
        from opentelemetry.util.http import sanitize_method

        url = request.url
        if not is_http_instrumentation_enabled() or (self._excluded and self._excluded.url_disabled(str(url))):
            return
        attributes: dict[str, str | int] = {
            "http.request.method": sanitize_method(request.method) or request.method,
            "error.type": error_type(type(error)),
        }
        if url.host:
            attributes["server.address"] = url.host
        if url.port:
            attributes["server.port"] = url.port
        histogram.record(max(seconds, 0.0), attributes)

    def _instrument(self) -> Histogram | None:
        """The upstream's histogram, when recording here is right (decided once)."""
        if self._ready:
            return self._histogram if _upstream_on() else None
        with self._lock:
            if not self._ready:
                self._histogram = self._find()
                self._ready = True
        return self._histogram if _upstream_on() else None

    def _find(self) -> Histogram | None:
        try:
            from opentelemetry.instrumentation._semconv import (
                HTTP_DURATION_HISTOGRAM_BUCKETS_NEW,
                _get_schema_url,
                _OpenTelemetrySemanticConventionStability,
                _OpenTelemetryStabilitySignalType,
                _report_new,
            )
            from opentelemetry.instrumentation.httpx.version import __version__
            from opentelemetry.semconv.metrics.http_metrics import HTTP_CLIENT_REQUEST_DURATION
            from opentelemetry.util.http import get_excluded_urls
        except ImportError:
            return None
        if __version__ not in VERIFIED_UPSTREAM:
            _logger.info(
                "otel-integration: opentelemetry-instrumentation-httpx %s is not one checked to leave failed "
                "attempts unrecorded; otel-integration records none (no double count)", __version__,
            )
            return None
        _OpenTelemetrySemanticConventionStability._initialize()  # type: ignore[no-untyped-call]
        mode = _OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode(
            _OpenTelemetryStabilitySignalType.HTTP
        )
        if not _report_new(mode):
            return None  # the old conventions only: no http.client.request.duration at all
        self._excluded = get_excluded_urls("HTTPX")
        meter = metrics.get_meter(UPSTREAM_SCOPE, __version__, self._meter_provider, _get_schema_url(mode))
        # The upstream's own arguments: the SDK hands back the instrument it created.
        return meter.create_histogram(
            name=HTTP_CLIENT_REQUEST_DURATION,
            unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=HTTP_DURATION_HISTOGRAM_BUCKETS_NEW,
        )


def _upstream_on() -> bool:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    return bool(HTTPXClientInstrumentor().is_instrumented_by_opentelemetry)
