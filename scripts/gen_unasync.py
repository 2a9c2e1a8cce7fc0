"""Write the sync transports from the async ones: ``python scripts/gen_unasync.py [--check]``.

`otel_integration/_client/async_transport.py` (and `async_cache.py`) are the
sources; each sync twin differs only by the I/O calls, so it is generated, not
copied by hand (as purgatory's ``scripts/gen_unasync.py`` does). ``--check``
exits 1 when a committed twin is out of date (a test runs it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parent.parent / "otel_integration" / "_client"
SOURCE = CLIENT / "async_transport.py"
TARGET = CLIENT / "sync_transport.py"
CACHE_SOURCE = CLIENT / "async_cache.py"
CACHE_TARGET = CLIENT / "sync_cache.py"

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
    # the caching transport's (none of these is in async_transport.py)
    ("AsyncCachingTransport", "CachingTransport"),
    ("AsyncCacheTransport", "CacheTransport"),
    ("AsyncBaseStorage", "BaseStorage"),
    ("_AsyncSend", "_Send"),
    ("_AsyncStoredForm", "_StoredForm"),
    ("async_storage", "sync_storage"),
    ("async_transport", "sync_transport"),
    ("async_cache.py", "sync_cache.py"),
]
HEADER = '''"""`ResilientTransport`: retries, circuit breaker and request ID around any sync httpx transport.

GENERATED from async_transport.py by scripts/gen_unasync.py: edit that file, then run the script.
"""
'''
CACHE_HEADER = '''"""`CachingTransport`: hishel's RFC 9111 cache, with stale-if-error, around the sync resilient transport.

GENERATED from async_cache.py by scripts/gen_unasync.py: edit that file, then run the script.
"""
'''


def unasync(source: str, header: str = HEADER) -> str:
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
    return header + "\n" + "\n".join(lines).strip("\n") + "\n"


def main(argv: list[str]) -> int:
    stale = False
    for source, target, header in ((SOURCE, TARGET, HEADER), (CACHE_SOURCE, CACHE_TARGET, CACHE_HEADER)):
        generated = unasync(source.read_text(), header)
        if "--check" in argv:
            if not target.exists() or target.read_text() != generated:
                print(f"{target} is out of date: run python scripts/gen_unasync.py", file=sys.stderr)
                stale = True
            continue
        target.write_text(generated)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
