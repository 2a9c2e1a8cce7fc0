"""Per-request helpers of the upstream server instrumentations, replaced with cheaper equivalents.

Each replacement returns what the upstream function returns, for every input;
only the work differs. They matter because they run several times per request
(issue 15: the per-request instruction budget of the server path):

* ``opentelemetry.instrumentation.asgi.ASGIGetter.get``: the upstream getter
  decodes every header name of the scope (a Python call per name) to find one
  header; the middleware and the propagators ask it for about nine headers
  per request. `asgi_getter` compares ASCII names as bytes (no Python call
  per name) and decodes, with the module's decoder (so `shield` applies), only
  what matches.
* ``opentelemetry.instrumentation.wsgi.collect_custom_request_headers_attributes``
  and ``..._response_...``: upstream builds its header sanitizer (two
  environment reads and, with the sanitized fields this distro sets, a regex
  look-up) before it learns that no header is to be captured. The
  replacements first read the capture variable, as upstream does on every
  call, and return upstream's empty answer when it is unset.
* ``opentelemetry.util.http.sanitize_method``, as bound in the asgi, wsgi,
  flask and fastapi instrumentations (one to three calls per request): upstream
  reads ``OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS`` before it looks
  at the method; `sanitize_method` reads it only for a method outside the
  standard list, where the answer depends on it.

* ``_start_internal_or_server_span``, as bound in the asgi and flask
  instrumentations: both start the SERVER span *with* the request's
  attributes, then set every one of them again through ``span.set_attribute``
  (ten on the FastAPI request of the tests, six on Flask), which validates each
  value a second time: about 58,000 instructions of a FastAPI request. The span
  it returns gets an instance-level `set_attribute_unless_held`
  (`skip_held_attributes`): for a value the span already holds (the very
  object), it does what the SDK would do without validating it again; for any
  other, it is the SDK's ``set_attribute``.

An unset variable costs ``os.environ.get`` about 8,500 instructions (a
KeyError raised and caught in Python), more than the rest of these helpers:
`_env` reads the environment's own dict instead (``os.environ._data``, private
to CPython's `os`, with ``os.environ.get`` as the fallback), the same mapping
``os.environ`` reads and writes (``monkeypatch.setenv`` included).

They are applied only to the upstream versions they were written against
(`_upstream_patch.TESTED`, of the instrumentation, or of opentelemetry-util-http for
`sanitize_method`): another version keeps its own functions (the test suite fails
then, in ``test_upstream_speedups_apply``, so the list is revisited with the
pin). Each ``install_*`` returns a function restoring upstream.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Span

from otel_integration._upstream_patch import TESTED, replace


_CAPTURE_REQUEST = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"
_CAPTURE_RESPONSE = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE"


# The standard methods of opentelemetry.util.http.sanitize_method (RFC 9110, RFC 5789, QUERY).
_METHODS = frozenset(["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"])
_CAPTURE_ALL_METHODS = "OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS"


def _env(name: str) -> Callable[[], Any]:
    """A reader of ``os.environ.get(name)``, truthy exactly when it is (the raw value on POSIX)."""
    data = getattr(os.environ, "_data", None)
    encodekey = getattr(os.environ, "encodekey", None)
    if isinstance(data, dict) and callable(encodekey):
        key = encodekey(name)
        return lambda: data.get(key)
    return lambda: os.environ.get(name)  # pragma: no cover - not CPython's os.environ


def _version(module: Any) -> str | None:
    # The instrumentations import their ``__version__``; the flask one then rebinds ``version`` to a function.
    for version in (getattr(module, "__version__", None), getattr(getattr(module, "version", None), "__version__", None)):
        if isinstance(version, str):
            return version
    return None


def _noop() -> None:
    return None


def install_asgi(module: Any) -> Callable[[], None]:
    """Replace ``ASGIGetter.get`` of the loaded upstream ASGI module (`module`), if its version is tested."""
    getter = getattr(module, "ASGIGetter", None)
    if _version(module) not in TESTED or getter is None or "get" not in getter.__dict__:
        return _noop
    original = getter.__dict__["get"]
    if getattr(original, "__module__", None) == __name__:
        return _noop  # already replaced
    return replace(getter, "get", asgi_getter(module))


def asgi_getter(module: Any) -> Callable[[Any, dict[str, Any], str], list[str] | None]:
    """``ASGIGetter.get`` of `module`: the decoded values of header `key`, or None."""

    # The lowered key's bytes, per key: a handful of constant names (traceparent, baggage, user-agent, ...).
    raw_keys: dict[str, bytes] = {}

    def get(self: Any, carrier: dict[str, Any], key: str) -> list[str] | None:
        headers = carrier.get("headers")
        if not headers:
            return None
        raw = raw_keys.get(key)
        if raw is None:
            raw = key.lower().encode("utf-8", "surrogatepass")
            if len(raw_keys) < 256:
                raw_keys[key] = raw
        decode: Callable[[Any], str] = module._decode_header_item  # the shield's, when installed
        found: list[str] | None = None
        # A plain loop: no list comprehension frame, no list when nothing matches (most calls).
        size = len(raw)
        for name, value in headers:
            if name.__class__ is bytes and name.isascii():
                # An ASCII name decodes to the same letters: lowered as bytes, it is the key's bytes or no
                # match (and one of another length cannot be: most names are ruled out without lowering).
                if len(name) != size or name.lower() != raw:
                    continue
            elif decode(name).lower() != key.lower():  # any other name as upstream compares it ("\u212a" lowers to "k")
                continue
            if found is None:
                found = [decode(value)]
            else:
                found.append(decode(value))
        return found

    return get


def install_wsgi(module: Any) -> Callable[[], None]:
    """Replace the custom-header collectors of the loaded upstream WSGI module (`module`), if its version is tested."""
    names = ("collect_custom_request_headers_attributes", "collect_custom_response_headers_attributes")
    originals = [getattr(module, name, None) for name in names]
    if _version(module) not in TESTED or not all(callable(f) for f in originals):
        return _noop
    request_original, response_original = originals
    if getattr(request_original, "__wrapped__", None) is not None:
        return _noop  # already replaced

    capture_request, capture_response = _env(_CAPTURE_REQUEST), _env(_CAPTURE_RESPONSE)

    def collect_custom_request_headers_attributes(environ: Any) -> dict[str, list[str]]:
        if not capture_request():
            return {}
        return request_original(environ)  # type: ignore[no-any-return, misc]

    def collect_custom_response_headers_attributes(response_headers: Any) -> dict[str, list[str]]:
        if not capture_response():
            return {}
        return response_original(response_headers)  # type: ignore[no-any-return, misc]

    restores = [
        replace(module, names[0], collect_custom_request_headers_attributes),
        replace(module, names[1], collect_custom_response_headers_attributes),
    ]

    def restore() -> None:
        for each in restores:
            each()

    return restore


def install_sanitize_method(module: Any) -> Callable[[], None]:
    """Replace `module`'s ``sanitize_method`` (imported from opentelemetry.util.http), if that version is tested."""
    import opentelemetry.util.http as util_http
    import opentelemetry.util.http.version  # noqa: F401 - for _version(util_http)

    original = getattr(module, "sanitize_method", None)
    if _version(util_http) not in TESTED or original is not util_http.sanitize_method:
        return _noop  # another version, or not upstream's function (already replaced, or someone else's)
    return replace(module, "sanitize_method", sanitize_method)


_capture_all_methods = _env(_CAPTURE_ALL_METHODS)


def sanitize_method(method: str | None) -> str | None:
    """``opentelemetry.util.http.sanitize_method``: the method upper-cased, or ``_OTHER`` outside the standard ones."""
    if method is None:
        return None
    method = method.upper()
    if method in _METHODS or _capture_all_methods():
        return method
    return "_OTHER"


def install_start_span(module: Any) -> Callable[[], None]:
    """Wrap `module`'s ``_start_internal_or_server_span`` (asgi, flask), if its version is tested."""
    from opentelemetry.instrumentation import utils

    original: Callable[..., tuple[Any, Any]] | None = getattr(module, "_start_internal_or_server_span", None)
    if _version(module) not in TESTED or original is None or original is not utils._start_internal_or_server_span:
        return _noop  # another version, or not upstream's function (already replaced, or someone else's)

    def _start_internal_or_server_span(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        span, token = original(*args, **kwargs)
        skip_held_attributes(span)
        return span, token

    return replace(module, "_start_internal_or_server_span", _start_internal_or_server_span)


def skip_held_attributes(span: Any) -> None:
    """Give `span`, if it is the SDK's with its own method, `set_attribute_unless_held` as its ``set_attribute``."""
    if span.__class__.set_attribute is Span.set_attribute:
        # Through a weak reference: a bound method in the span's own dict would make every
        # SERVER span a reference cycle, left to the garbage collector.
        span.set_attribute = functools.partial(set_attribute_unless_held, weakref.ref(span))


_ABSENT = object()


def set_attribute_unless_held(span_reference: Callable[[], Any], key: str, value: Any) -> None:
    """``Span.set_attribute`` of the referenced span, without validating again the very value it holds.

    The span is alive when this is called: the call is only reachable from the
    span's own dict.

    For such a value the SDK would validate it, then store the same object
    again: delete the key and insert it last (which decides what a full
    attribute dict evicts first). That last part is done here, under the
    span's lock, which every SDK write of a span's attributes holds. A value
    that was truncated, converted (lists to tuples) or dropped at the start is
    not the same object, so it takes the SDK's path, as does any call on an
    ended span.
    """
    span = span_reference()
    store = span._attributes
    if key.__class__ is str and store.__class__ is BoundedAttributes:  # else: the SDK's path, with its warnings
        with span._lock:
            held: dict[str, Any] = store._dict
            if span._end_time is None and not store._immutable and held.get(key, _ABSENT) is value:
                del held[key]
                held[key] = value
                return
    Span.set_attribute(span, key, value)
