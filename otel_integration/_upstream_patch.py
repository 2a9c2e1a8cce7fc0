"""Putting a cheaper equivalent in place of an upstream instrumentation's function, and back.

Used by `_client/upstream_speedups.py` and `_server/upstream.py`
(``OTEL_INTEGRATION_UPSTREAM_SPEEDUPS``). Only the upstream versions in
`TESTED` are patched: the replacements mirror those versions' functions, and
the tests that compare them fail when the pins move, so this list is
revisited with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The opentelemetry-python-contrib versions (instrumentations and opentelemetry-util-http) ours mirror.
TESTED = ("0.66b1",)


def replace(owner: Any, name: str, replacement: Callable[..., Any]) -> Callable[[], None]:
    """Set ``owner.name`` (a module's function or a class's method) to `replacement`; the restore function.

    The replacement keeps the original as ``__wrapped__``; restoring puts it back
    only if the replacement is still the one in place.
    """
    original = getattr(owner, name)
    replacement.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, name, replacement)

    def restore() -> None:
        if owner.__dict__.get(name) is replacement:
            setattr(owner, name, original)

    return restore
