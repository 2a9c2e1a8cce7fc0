"""Write the sync transport from the async one: ``python scripts/gen_unasync.py [--check]``.

`otel_integration/_client/async_transport.py` is the source; the sync twin
differs only by the I/O calls, so it is generated, not copied by hand (as
purgatory's ``scripts/gen_unasync.py`` does). ``--check`` exits 1 when the
committed twin is out of date (a test runs it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parent.parent / "otel_integration" / "_client"
SOURCE = CLIENT / "async_transport.py"
TARGET = CLIENT / "sync_transport.py"

# Whole-word replacements, applied in this order.
WORDS = [
    ("AsyncResilientTransport", "ResilientTransport"),
    ("AsyncBaseTransport", "BaseTransport"),
    ("AsyncHTTPTransport", "HTTPTransport"),
    ("AsyncClient", "Client"),
    ("handle_async_request", "handle_request"),
    ("aclose", "close"),
    ("aread", "read"),
    ("async_transport.py", "sync_transport.py"),
]
HEADER = '''"""`ResilientTransport`: retries, circuit breaker and request ID around any sync httpx transport.

GENERATED from async_transport.py by scripts/gen_unasync.py: edit that file, then run the script.
"""
'''


def unasync(source: str) -> str:
    body = source.split('"""', 2)[2]  # drop the module docstring
    lines = []
    for line in body.splitlines():
        if "checkpoint" in line:
            continue  # yielding to an event loop: nothing to do without one
        line = re.sub(r"\basync def\b", "def", line)
        line = re.sub(r"\basync (for|with)\b", r"\1", line)
        line = re.sub(r"\bawait ", "", line)
        for old, new in WORDS:
            line = re.sub(rf"\b{re.escape(old)}\b", new, line)
        lines.append(line)
    return HEADER + "\n" + "\n".join(lines).strip("\n") + "\n"


def main(argv: list[str]) -> int:
    generated = unasync(SOURCE.read_text())
    if "--check" in argv:
        if TARGET.read_text() != generated:
            print(f"{TARGET} is out of date: run python scripts/gen_unasync.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
