"""Structured errors: what a caller gets when a call finally fails (``OTEL_INTEGRATION_STRUCTURED_ERRORS``).

Two places turn an httpx error into its twin in `otel_integration.errors`
(an `IntegrationError` that is also the httpx class):

- the transports, for the error of a call's last attempt (`transport_error`);
- ``httpx.Response.raise_for_status``, wrapped while the client instrumentation
  is on (`install`), for a response the layer returned (`status_error`). The
  transports leave the call's facts on ``response.extensions["otel_integration"]``
  (`CALL_INFO`) for it; a response that did not pass the layer is named by its
  ``host:port``.

The attempt spans and metrics were recorded with the original httpx error,
before any conversion: ``error.type`` is httpx's class name either way.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, TypedDict

import httpx
from opentelemetry import trace

from otel_integration._client.downstreams import address
from otel_integration._redaction import Redactor
from otel_integration.errors import IntegrationError, status_error_class, twin_of

_logger = logging.getLogger(__name__)

CALL_INFO = "otel_integration"  # the response extension the transports set


class CallInfo(TypedDict):
    """What a response that passed the layer carries in ``response.extensions[CALL_INFO]``."""

    downstream: str
    attempts: int
    request_id: str | None


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _facts(attempts: int | None, request_id: str | None, status: int | None) -> list[str]:
    parts = []
    if attempts is not None:
        parts.append("1 attempt" if attempts == 1 else f"{attempts} attempts")
    if status is not None:
        parts.append(f"last status {status}")
    if request_id:
        parts.append(f"request_id {request_id}")
    return parts


def transport_error(
    error: BaseException,
    *,
    downstream: str,
    attempts: int,
    request_id: str | None,
    status: int | None,
    request: httpx.Request,
    redactor: Redactor,
) -> BaseException:
    """The twin of `error` with the call's facts, or `error` itself (not an httpx transport error)."""
    twin = twin_of(type(error))
    if twin is None or isinstance(error, IntegrationError):
        return error
    original = redactor.text(str(error)) or type(error).__name__
    converted = twin(
        f"{original} ({', '.join([downstream, *_facts(attempts, request_id, status)])})",
        downstream=downstream,
        attempts=attempts,
        request_id=request_id,
        trace_id=current_trace_id(),
        status=status,
        request=request,
    )
    # As `raise converted from error`: the original traceback stays one "direct cause" away.
    converted.__cause__, converted.__suppress_context__ = error, True
    return converted


_KIND = {1: "Informational response", 3: "Redirect response", 4: "Client error", 5: "Server error"}


def call_facts(response: httpx.Response) -> tuple[str, int | None, str | None]:
    """The downstream, attempts and request ID of the call that got `response`; for one that did
    not pass the layer, its ``host:port`` and nothing else."""
    info: CallInfo | None = response.extensions.get(CALL_INFO)
    if info is not None:
        return info["downstream"], info["attempts"], info["request_id"]
    host, port = address(response.request.url)
    return f"{host}:{port}", None, None


def status_error(response: httpx.Response, redactor: Redactor) -> IntegrationError:
    """The structured `httpx.HTTPStatusError` for a response that is not a success."""
    request = response.request
    downstream, attempts, request_id = call_facts(response)
    status = response.status_code
    kind = _KIND.get(status // 100, "Invalid status code")
    message = f"{kind} '{status} {response.reason_phrase}' from {downstream} for {request.method} {redactor.url(str(request.url))}"
    facts = _facts(attempts, request_id, None)
    if facts:
        message += f" ({', '.join(facts)})"
    return status_error_class(status)(
        message,
        downstream=downstream,
        attempts=attempts,
        request_id=request_id,
        trace_id=current_trace_id(),
        status=status,
        request=request,
        response=response,
    )


_ORIGINAL = "_otel_integration_original"


def install(redactor: Redactor) -> None:
    """Wrap ``httpx.Response.raise_for_status``: the structured subclass instead of httpx's own."""
    if hasattr(httpx.Response.raise_for_status, _ORIGINAL):
        return
    original: Callable[[httpx.Response], httpx.Response] = httpx.Response.raise_for_status

    @functools.wraps(original)
    def raise_for_status(self: httpx.Response) -> httpx.Response:
        try:
            return original(self)
        except httpx.HTTPStatusError as error:
            try:
                structured = status_error(self, redactor)
            except Exception:  # noqa: BLE001 - our bug must not change what the caller gets
                _logger.exception("otel-integration: could not build a structured status error")
                raise error from None
            raise structured from None  # httpx's message holds the raw URL: not chained

    setattr(raise_for_status, _ORIGINAL, original)
    httpx.Response.raise_for_status = raise_for_status  # type: ignore[method-assign]


def uninstall() -> None:
    original: Any = getattr(httpx.Response.raise_for_status, _ORIGINAL, None)
    if original is not None:
        httpx.Response.raise_for_status = original  # type: ignore[method-assign]
