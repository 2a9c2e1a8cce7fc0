"""The correlation-ID header of an outgoing httpx request, read and added in one pass.

httpx's `Headers.get` and `Headers.__setitem__` each scan the header list, and
`get` first decodes every header to choose an encoding: about 20,000
instructions per call for the one header the distro owns. httpx keeps the
headers as ``(raw name, lowercased name, value)`` byte triples in
``Headers._list`` (every release the package allows, see pyproject.toml);
`CorrelationHeader` reads and appends there, and uses the public API when
the list is not what it expects.
"""

from __future__ import annotations

import httpx

# A header given more than once: its values joined, as `Headers.get` would, can never be a valid ID.
REPEATED = ""


class CorrelationHeader:
    """One header name (``OTEL_INTEGRATION_REQUEST_ID_HEADER``, validated ASCII by the settings)."""

    __slots__ = ("name", "_raw", "_lower")

    def __init__(self, name: str) -> None:
        self.name = name
        self._raw = name.encode("ascii")
        self._lower = self._raw.lower()

    def find(self, headers: httpx.Headers) -> bytes | str | None:
        """The request's own value: None if absent, `REPEATED` if given more than once."""
        items = getattr(headers, "_list", None)
        if type(items) is not list:
            values = headers.get_list(self.name)
            return None if not values else values[0] if len(values) == 1 else REPEATED
        found: bytes | None = None
        for _, lower, value in items:
            if lower == self._lower:
                if found is not None:
                    return REPEATED
                found = value
        return found

    def add(self, headers: httpx.Headers, value: str) -> None:
        """Add the header to a request that has none (`find` said so); `value` is a valid, ASCII ID."""
        items = getattr(headers, "_list", None)
        if type(items) is not list:
            headers[self.name] = value
            return
        items.append((self._raw, self._lower, value.encode("ascii")))
