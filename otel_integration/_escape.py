"""Control characters out of what a request can put in a log line or a span attribute.

A value that came from the network (a header, the path) may hold CR, LF, NUL,
ESC or Unicode line separators; written raw, it forges log lines or terminal
output. `escape_controls` writes each such character as ``\\xNN`` / ``\\uNNNN``;
`bounded` also cuts a value to a length a log line can carry.
"""

from __future__ import annotations

import re

# C0 (tab included), DEL, C1, the Unicode line and paragraph separators, and the
# bidirectional overrides and isolates that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_LOGGED_LENGTH = 256


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every control character escaped; unchanged (the same object) when it has none."""
    if text.isprintable():
        return text
    return _CONTROL.sub(_escaped, text)


def bounded(text: str, limit: int = MAX_LOGGED_LENGTH) -> str:
    """Escaped, and cut to `limit` characters with a note of how much was left out."""
    text = escape_controls(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"
