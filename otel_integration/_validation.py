"""`validate(response, schema)`: a downstream's JSON body checked against what the caller expects.

Opt-in, because only the caller knows the schema::

    from pydantic import BaseModel
    import otel_integration

    class Extraction(BaseModel):
        document_id: str
        pages: int

    extraction = otel_integration.validate(response, Extraction)   # an Extraction, or ValidationError

``schema`` is a pydantic model class or `pydantic.TypeAdapter`
(``pip install 'otel-integration[validation]'``), or any callable taking the
decoded JSON and returning the value (raising `ValueError`, `TypeError` or
`KeyError` when it does not fit). pydantic is imported only when the schema is
one of its types.

A failure raises `otel_integration.errors.ValidationError` naming the
downstream, the method, the path and every failing field with what was
expected and what came (the value's JSON type, and the value itself, escaped
and bounded, unless the field's name looks secret, as for URL parameters). It
adds the event ``http.client.response.validation_error`` to the current span and
counts ``http.client.response.validation_errors`` by downstream.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import httpx
from opentelemetry import trace

from otel_integration._client import layer as layers
from otel_integration._client.downstreams import address
from otel_integration._client.structured import call_facts, current_trace_id
from otel_integration._escape import bounded, escape_controls
from otel_integration._redaction import DEFAULT as REDACTOR
from otel_integration.errors import ValidationError

_logger = logging.getLogger(__name__)

EVENT = "http.client.response.validation_error"
_MAX_FIELDS = 32  # named in the message and on the span event; the count says how many in all
_MAX_VALUE = 40  # characters of a value shown in "got"
_MAX_EXPECTED = 200  # characters of a schema's message (a custom validator's may quote the value)
_HIDDEN = "(hidden)"

Field = tuple[str, str, str]  # location, expected, got


def validate(response: httpx.Response, schema: Any) -> Any:
    """The response's JSON body as ``schema`` parses it; `ValidationError` if it does not fit."""
    parse = _parser(schema)
    fields: list[Field]
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        kind = response.headers.get("content-type", "no content type")
        fields = [("(body)", "a JSON document", f"{len(response.content)} bytes of {_shown(kind)}")]
    else:
        try:
            return parse(data)
        except Exception as error:  # noqa: BLE001 - sorted below: only a schema's verdicts become ValidationError
            verdict = _fields(error, data)
            if verdict is None:
                raise
            fields = verdict
    raise _failed(response, schema, fields)


def _parser(schema: Any) -> Callable[[Any], Any]:
    if isinstance(schema, type) and hasattr(schema, "model_validate"):  # a pydantic model class
        return schema.model_validate  # type: ignore[no-any-return]
    if hasattr(schema, "validate_python") and hasattr(schema, "json_schema"):  # a pydantic TypeAdapter
        return schema.validate_python  # type: ignore[no-any-return]
    if callable(schema):
        return schema  # type: ignore[no-any-return]
    raise TypeError(f"validate: schema must be a pydantic model, a TypeAdapter or a callable, not {type(schema).__name__}")


def _fields(error: Exception, data: Any) -> list[Field] | None:
    """The failing fields of a schema's error; None for an error that is not a verdict on the data."""
    errors = getattr(error, "errors", None)
    if callable(errors) and type(error).__module__.startswith("pydantic"):
        found = []
        for item in errors(include_url=False):
            location = ".".join(str(part) for part in item.get("loc", ())) or "(body)"
            secret = any(isinstance(part, str) and REDACTOR.sensitive(part) for part in item.get("loc", ()))
            got = "missing" if item.get("type") == "missing" else _got(item.get("input"), secret)
            found.append((location, bounded(str(item.get("msg", "")), _MAX_EXPECTED), got))
        return found
    if isinstance(error, KeyError):
        name = str(error.args[0]) if error.args else ""
        return [(_shown(name) or "(body)", "present", "missing")]
    if isinstance(error, (ValueError, TypeError)):
        # A callable's message may quote the data: redacted and bounded like any other network text.
        return [("(body)", _shown(REDACTOR.text(str(error))) or type(error).__name__, _got(data, secret=True))]
    return None


def _got(value: Any, secret: bool) -> str:
    kind = _json_type(value)
    if kind in ("object", "array"):
        return kind
    return f"{kind} {_HIDDEN}" if secret else f"{kind} {_shown(json.dumps(value))}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _shown(text: str) -> str:
    """A network-supplied string as it may appear in a message: escaped, bounded."""
    text = escape_controls(text)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def _schema_name(schema: Any) -> str:
    name = getattr(schema, "__name__", None)
    if name is None and hasattr(schema, "validate_python"):
        name = f"TypeAdapter({getattr(getattr(schema, '_type', None), '__name__', None) or 'type'})"
    return str(name or type(schema).__name__)


def _failed(response: httpx.Response, schema: Any, fields: list[Field]) -> ValidationError:
    request = response.request
    url = request.url
    host, port = address(url)
    downstream, attempts, request_id = call_facts(response)
    path = bounded(url.path, _MAX_VALUE * 2)
    shown = fields[:_MAX_FIELDS]
    listed = "; ".join(f"{location}: expected {expected}, got {got}" for location, expected, got in shown)
    more = f"; and {len(fields) - len(shown)} more" if len(fields) > len(shown) else ""
    count = "1 field" if len(fields) == 1 else f"{len(fields)} fields"
    message = (
        f"response of {downstream} to {request.method} {path} does not match {_schema_name(schema)} "
        f"({count}): {listed}{more}"
    )
    error = ValidationError(
        message, downstream=downstream, attempts=attempts, request_id=request_id,
        trace_id=current_trace_id(), status=response.status_code, request=request,
    )
    error.method, error.path, error.fields = request.method, url.path, tuple(fields)
    _record(downstream, host, port, request.method, _schema_name(schema), fields)
    return error


def _record(downstream: str, host: str, port: int, method: str, schema: str, fields: list[Field]) -> None:
    """The span event and the counter; never an exception of ours instead of the ValidationError."""
    try:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(EVENT, {
                "server.address": host,
                "server.port": port,
                "http.request.method": method,
                "validation.schema": schema,
                "validation.field_count": len(fields),
                "validation.fields": [location for location, _, _ in fields[:_MAX_FIELDS]],
            })
        layer = layers.current()
        attributes = layer.downstreams.get(host, port).attributes
        layer.instruments.validation_errors.add(1, attributes)
    except Exception:  # noqa: BLE001
        _logger.debug("otel-integration: could not record a validation error of %s", downstream, exc_info=True)
