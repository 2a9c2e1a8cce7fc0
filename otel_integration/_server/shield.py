"""What the bytes of a request header can do to the upstream ASGI instrumentation: nothing.

`opentelemetry.instrumentation.asgi` decodes header names and values with
``_decode_header_item``: UTF-8, and when that fails, ``unicode_escape``. That
fallback raises on a bad backslash escape (``\\xff\\x`` in ``User-Agent``
answered 500, where the bare app answers 200) and turns the text ``\\r\\n``
into a real CR LF, which then reached span attributes and log lines.

`install` replaces that function, for the instrumentation only, with one that
never raises and never creates a character the bytes did not hold: invalid
UTF-8 bytes become ``\\xNN`` text (``backslashreplace``). The app still sees
its headers' bytes unchanged. The replacement is installed on the first
request the distro's ASGI middleware handles, when the upstream module is
loaded for sure, and removed by `uninstall`.
"""

from __future__ import annotations

import sys
from typing import Any

_UPSTREAM = "opentelemetry.instrumentation.asgi"
_ATTRIBUTE = "_decode_header_item"
_state: dict[str, Any] = {"original": None, "installed": False}


def decode_header_item(value: Any) -> str:
    """Header bytes as text: UTF-8, invalid bytes as ``\\xNN``; a str is returned as it is."""
    if isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "backslashreplace")


def ensure() -> None:
    """`install`, until it succeeds once; then a dictionary lookup per request."""
    if not _state["installed"]:
        _state["installed"] = install()


def install() -> bool:
    """Replace the upstream decoder if its module is loaded; True once it is replaced."""
    module = sys.modules.get(_UPSTREAM)
    if module is None:
        return False
    current = getattr(module, _ATTRIBUTE, None)
    if current is decode_header_item:
        return True
    if current is None:
        return False
    _state["original"] = current
    setattr(module, _ATTRIBUTE, decode_header_item)
    return True


def uninstall() -> None:
    _state["installed"] = False
    original, _state["original"] = _state["original"], None
    module = sys.modules.get(_UPSTREAM)
    if original is not None and module is not None and getattr(module, _ATTRIBUTE, None) is decode_header_item:
        setattr(module, _ATTRIBUTE, original)
