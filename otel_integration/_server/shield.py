"""What the bytes of a request header can do to the upstream ASGI instrumentation: nothing.

`opentelemetry.instrumentation.asgi` decodes header names and values with
``_decode_header_item``: UTF-8, and when that fails, ``unicode_escape``. That
fallback raises on a bad backslash escape (``\\xff\\x`` in ``User-Agent``
answered 500, where the bare app answers 200) and turns the text ``\\r\\n``
into a real CR LF, which then reached span attributes and log lines.

`install` replaces that function, for the instrumentation only, with one that
never raises and never creates a character the bytes did not hold: invalid
UTF-8 bytes become ``\\xNN`` text (``backslashreplace``). The app still sees
its headers' bytes unchanged. `install_when_loaded` installs it as soon as
the upstream module is imported (at once if it already is): nothing is left
to do per request. `uninstall` removes it.
"""

from __future__ import annotations

import sys
from typing import Any

_UPSTREAM = "opentelemetry.instrumentation.asgi"
_ATTRIBUTE = "_decode_header_item"
_state: dict[str, Any] = {"original": None, "wanted": False, "hooked": False}


def decode_header_item(value: Any) -> str:
    """Header bytes as text: UTF-8, invalid bytes as ``\\xNN``; a str is returned as it is."""
    # The upstream middleware calls its decoder several times per header and
    # request: valid UTF-8 (the common case) costs what the upstream decoder costs.
    # (A C-level operator.methodcaller was measured: it costs more per call, as
    # it builds a bound method each time.)
    try:
        return value.decode("utf-8")  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        return value.decode("utf-8", "backslashreplace")  # type: ignore[no-any-return]
    except AttributeError:  # a str (already text), or a buffer without .decode
        return value if isinstance(value, str) else bytes(value).decode("utf-8", "backslashreplace")


def install_when_loaded() -> None:
    """`install` once the upstream module is imported: now if it is, else from its import."""
    _state["wanted"] = True
    if _UPSTREAM in sys.modules:
        install()
        return
    if _state["hooked"]:
        return  # the hook registered before is still waiting for the import
    import wrapt

    def loaded(_module: Any) -> None:
        if _state["wanted"]:
            install()

    _state["hooked"] = True
    wrapt.register_post_import_hook(loaded, _UPSTREAM)


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
    _state["wanted"] = False
    original, _state["original"] = _state["original"], None
    module = sys.modules.get(_UPSTREAM)
    if original is not None and module is not None and getattr(module, _ATTRIBUTE, None) is decode_header_item:
        setattr(module, _ATTRIBUTE, original)
