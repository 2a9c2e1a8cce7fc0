"""Auth forwarding: the incoming Authorization header, to allowlisted downstreams only.

Off by default. With ``OTEL_INTEGRATION_AUTH_FORWARD_TO=extract,catalog:8082``
the server middleware (`_server/correlation.py`) keeps the Authorization
header of the request being handled in the OpenTelemetry context, under a
private key that no propagator reads: it is never put in baggage and never
injected by `opentelemetry.propagate`. The resilience layer, when the
allowlist is set, runs `forward_authorization` before each call is sent: it
copies the header onto the outgoing httpx request only when

- the downstream is on the allowlist, by logical name (``OTEL_INTEGRATION_SERVICES``)
  or by ``host`` or ``host:port``; and
- the outgoing request has no Authorization header of its own.

The value is never recorded: it is not a span or metric attribute, it is not
logged, and ``authorization`` is added to
``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS`` so the upstream
instrumentations redact it even when told to capture every header.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import httpx
from opentelemetry import context as otel_context
from opentelemetry.context import Context

if TYPE_CHECKING:
    from otel_integration._client.downstreams import Downstream

AUTHORIZATION_KEY = otel_context.create_key("otel_integration.incoming_authorization")
SANITIZE_FIELDS = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"
SENSITIVE_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie")
_MAX_AUTHORIZATION_LENGTH = 16 * 1024


# RFC 9110 §11.4 and §11.6.2: credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ].
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Not starting with a quote, so that a quoted string has one reading only (no backtracking blow-up).
_VISIBLE_BUT_COMMA = r"[\x21\x23-\x2b\x2d-\x7e][\x21-\x2b\x2d-\x7e]*"
# A parameter's value: a token in the RFC; AWS Signature V4 puts "/" in it, so any visible character but ",".
_PARAM = rf"{_TOKEN}[ \t]*=[ \t]*(?:\"(?:[^\"\\]|\\.)*\"|{_VISIBLE_BUT_COMMA})"
_ONE_CREDENTIALS = re.compile(
    # token68, loosened the same way (SharedKey account:signature)
    rf"{_TOKEN}(?: +(?:{_PARAM}(?:[ \t]*,[ \t]*{_PARAM})*|{_VISIBLE_BUT_COMMA}))?", re.ASCII
)


def valid_authorization(value: object) -> str | None:
    """A header value that is safe to copy onto another request, else None.

    It must be one set of credentials: a repeated header that the server
    joined with ``,`` (WSGI servers do; ``Bearer a,Bearer b``) is ambiguous,
    so nothing is forwarded.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not value or len(value) > _MAX_AUTHORIZATION_LENGTH:
        return None
    if _ONE_CREDENTIALS.fullmatch(value.strip(" \t")) is None:
        return None
    return value.strip(" \t")


def set_incoming_authorization(value: str, context: Context | None = None) -> Context:
    return otel_context.set_value(AUTHORIZATION_KEY, value, context)


def get_incoming_authorization(context: Context | None = None) -> str | None:
    return otel_context.get_value(AUTHORIZATION_KEY, context)  # type: ignore[return-value]


def allowed(downstream: Downstream, allowlist: Iterable[str]) -> bool:
    names = {name.lower() for name in allowlist}
    if not names:
        return False
    candidates = {downstream.key.lower(), downstream.host.lower(), f"{downstream.host.lower()}:{downstream.port}"}
    if downstream.peer_service:
        candidates.add(downstream.peer_service.lower())
    return not names.isdisjoint(candidates)


def forward_authorization(request: httpx.Request, downstream: Downstream) -> None:
    """The before-send hook: add the incoming Authorization when allowed."""
    allowlist = downstream.settings.auth_forward_to
    if not allowlist or "authorization" in request.headers:
        return
    value = get_incoming_authorization()
    if value is None or not allowed(downstream, allowlist):
        return
    request.headers["Authorization"] = value


def sanitize_sensitive_headers(environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    """Make the upstream instrumentations redact credentials if they capture headers."""
    current = [h.strip() for h in environ.get(SANITIZE_FIELDS, "").split(",") if h.strip()]
    lowered = {h.lower() for h in current}
    missing = [h for h in SENSITIVE_HEADERS if h not in lowered]
    if missing:
        environ[SANITIZE_FIELDS] = ",".join([*current, *missing])
