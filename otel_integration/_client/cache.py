"""Response caching with stale-if-error: the decisions, the storages and the telemetry.

Opt-in with ``OTEL_INTEGRATION_CACHE=memory|sqlite:///path.db|redis://...``.
The cache itself is hishel's (RFC 9111, ``hishel.httpx.CacheTransport``); this
module decides what goes through it, and adds what hishel does not do:

- **Outside the retry loop.** The caching transports (`async_cache.py`, and
  `sync_cache.py` generated from it) wrap the resilient transport, so a hit
  costs no attempt, no breaker admission and no budget.
- **A shared cache.** One process answers many callers, so hishel runs with
  its shared-cache rules (``private`` responses and responses to
  ``Authorization`` requests are not stored). Beyond that, a request carrying
  credentials (``Authorization``, ``Proxy-Authorization``, ``Cookie``), or one
  the auth forwarding hook would give the incoming caller's ``Authorization``,
  never goes through the cache at all: hishel does not key entries by those
  headers, so a stored response could otherwise answer another caller.
- **A default freshness** (``CACHE_TTL``, per service): a response with neither
  ``Cache-Control`` nor ``Expires`` is stored as if it said
  ``Cache-Control: max-age=<TTL>`` (RFC 9111 §4.2.2 lets a cache choose a
  heuristic freshness; this one is configured rather than guessed).
- **Stale-if-error** (RFC 5861): when the call fails (breaker open, failing
  probe, the downstream's transport error, or a 500/502/503/504 after the
  retries), a GET with a stored response that has been stale for less than
  ``CACHE_MAX_STALE`` gets that response, with an ``Age`` header, instead.
  Responses that forbid it (``no-cache``, ``must-revalidate``,
  ``proxy-revalidate``, ``s-maxage``: RFC 9111 §4.2.4) are never served stale.
  Storages keep an entry for its freshness plus ``CACHE_MAX_STALE``, so that
  it is still there when it is needed.

hishel is an optional dependency (the ``[cache]`` extra): nothing here imports
it until a storage is made, and the layer builds a `ResponseCache` only when
the cache is on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from otel_integration import _auth as auth
from otel_integration import _forks as forks
from otel_integration._client import policy
from otel_integration._client.downstreams import address
from otel_integration._client.tracing import CACHE_OUTCOME, PEER_SERVICE
from otel_integration._settings import Settings, mask_secret_url
from otel_integration._telemetry import CACHE_OUTCOME_ATTRIBUTE, Instruments
from otel_integration.errors import CircuitOpenError, DownstreamUnhealthyError, error_type

if TYPE_CHECKING:
    from hishel import AsyncBaseStorage, BaseStorage, CacheOptions, Entry, Request, Response

    from otel_integration._client.downstreams import Downstream, Downstreams

_logger = logging.getLogger(__name__)

# The outcomes: span attribute CACHE_OUTCOME and the counter's CACHE_OUTCOME_ATTRIBUTE.
HIT = "hit"  # answered from the cache, no network I/O
MISS = "miss"  # the cache could not answer alone: the call went out (a revalidation too)
STALE = "stale"  # the call failed and a stored, stale response answered instead
BYPASS = "bypass"  # a GET or HEAD with credentials: never looked up, never stored

# The response extension naming what the cache did: {"outcome": ..., "age": seconds, "error": what failed}.
EXTENSION = "otel_integration.cache"
CACHED_METHODS = frozenset({"GET", "HEAD"})
# Stale-if-error serves GET only: a HEAD has no body worth keeping a caller from its error for.
STALE_METHODS = frozenset({"GET"})
# RFC 5861 §4: "an error is any situation that would result in a 500, 502, 503, or 504".
STALE_STATUSES = frozenset({500, 502, 503, 504})
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie")
# Keys of every storage start with this, so a shared Redis keeps them apart from anything else.
KEY_PREFIX = "otel-integration:cache"
# An in-memory cache lives in the process's RAM: bounded well below hishel's 1 GiB default.
MEMORY_MAX_SIZE = 64 * 1024 * 1024


def rfc_options() -> CacheOptions:
    from hishel import CacheOptions

    return CacheOptions(shared=True, supported_methods=sorted(CACHED_METHODS), allow_stale=False)


class Lookup:
    """One request through the cache: its key, its service's settings, its telemetry."""

    __slots__ = ("cache", "request", "downstream", "key", "counted", "bypass", "default_ttl", "max_stale")

    def __init__(self, cache: ResponseCache, request: httpx.Request, downstream: Downstream) -> None:
        self.cache = cache
        self.request = request
        self.downstream = downstream
        # One key for every method of a URL, as hishel's RFC mode does: an unsafe request
        # (POST, PUT, DELETE) finds, and invalidates, the entries of its target (RFC 9111 §4.4).
        self.key = hashlib.sha256(str(request.url).encode()).hexdigest()
        self.counted = request.method in CACHED_METHODS
        self.bypass = False  # it carries credentials: sent as if there were no cache
        settings = downstream.settings
        self.default_ttl = settings.cache_ttl
        self.max_stale = settings.cache_max_stale

    # --- stale-if-error ---------------------------------------------------------------------------

    def may_serve_stale(self, error: BaseException) -> bool:
        """Whether a failed call may be answered with a stale response: the downstream's failure, not the caller's."""
        if self.request.method not in STALE_METHODS or not self.max_stale:
            return False
        return isinstance(error, (CircuitOpenError, DownstreamUnhealthyError)) or policy.fails_downstream(error)

    def may_replace(self, response: httpx.Response) -> bool:
        return self.request.method in STALE_METHODS and self.max_stale > 0 and response.status_code in STALE_STATUSES

    def choose_stale(self, entries: Iterable[Entry]) -> tuple[Entry, int] | None:
        """The most recent stored response that may answer this failed GET, and its age; None: none may."""
        from hishel._core._headers import parse_cache_control
        from hishel._core._spec import get_age, get_freshness_lifetime, vary_headers_match

        internal = request_to_internal(self.request)
        usable: list[tuple[int, Entry]] = []
        for entry in entries:
            if entry.request.method != self.request.method or entry.request.url != internal.url:
                continue
            if not vary_headers_match(internal, entry):
                continue
            directives = parse_cache_control(entry.response.headers.get("cache-control"))
            if directives.no_cache or directives.must_revalidate or directives.proxy_revalidate:
                continue  # RFC 9111 §4.2.4: never served stale, whatever the error
            if directives.s_maxage is not None:
                continue  # §5.2.2.10: s-maxage means proxy-revalidate for a shared cache
            age = get_age(entry.response)
            freshness = get_freshness_lifetime(entry.response, is_cache_shared=True) or 0
            if age - freshness < self.max_stale:
                usable.append((age, entry))
        if not usable:
            return None
        age, entry = min(usable, key=lambda pair: pair[0])  # the youngest: the most recent
        return entry, age

    def stale_response(self, entry: Entry, age: int, content: bytes, reason: str) -> httpx.Response:
        """The stored response as the caller gets it: ``Age`` set (RFC 9111 §5.1), marked, recorded."""
        headers = [
            (name.encode(), value.encode())
            for name in entry.response.headers
            if name != "age"
            for value in entry.response.headers.get_list(name) or []
        ]
        headers.append((b"age", str(age).encode()))
        response = httpx.Response(
            entry.response.status_code,
            headers=headers,
            content=content,
            request=self.request,
            extensions={
                "caching": {"from_cache": True, "revalidated": False, "stored": False},
                EXTENSION: {"outcome": STALE, "age": age, "error": reason},
            },
        )
        self.record(STALE, response, age=age, reason=reason)
        return response

    # --- telemetry --------------------------------------------------------------------------------------

    def record(
        self, outcome: str, response: httpx.Response | None = None, *, age: int | None = None, reason: str | None = None
    ) -> None:
        """Count the outcome; a hit or a stale answer also gets its CLIENT span (no attempt made one)."""
        if not self.counted:
            return
        if response is not None and EXTENSION not in response.extensions:
            response.extensions[EXTENSION] = {"outcome": outcome}
        try:
            attributes = {
                **self.downstream.attributes, "http.request.method": self.request.method,
                CACHE_OUTCOME_ATTRIBUTE: outcome,
            }
            self.cache.instruments.cache_requests.add(1, attributes)
            if outcome in (HIT, STALE) and response is not None:
                self._span(outcome, response, age, reason)
        except Exception:  # noqa: BLE001 - telemetry must not fail a call that has its answer
            if self.cache.log_once("record"):
                _logger.exception("otel-integration: could not record a cache outcome")

    def _span(self, outcome: str, response: httpx.Response, age: int | None, reason: str | None) -> None:
        span_attributes: dict[str, str | int | tuple[str, ...]] = {
            "http.request.method": self.request.method,
            "server.address": self.downstream.host,
            "server.port": self.downstream.port,
            "url.full": str(self.request.url),  # redacted on export, with every span
            "http.response.status_code": response.status_code,
            CACHE_OUTCOME: outcome,
        }
        if age is not None:
            span_attributes["http.response.header.age"] = (str(age),)
        if reason is not None:
            span_attributes[STALE_IF_ERROR] = reason
        if self.downstream.peer_service:
            span_attributes[PEER_SERVICE] = self.downstream.peer_service
        self.cache.tracer.start_span(self.request.method, kind=SpanKind.CLIENT, attributes=span_attributes).end()


# What failed when a stale response answered instead: the error's class or the status code.
STALE_IF_ERROR = "http.client.cache.stale_if_error"


def reason_of(error: BaseException) -> str:
    return error_type(type(error))


def request_to_internal(request: httpx.Request) -> Request:
    """The request as hishel's state machine sees it (the same conversion as its transport)."""
    from hishel import Headers, Request

    grouped: dict[str, list[str]] = {}
    for name, value in request.headers.multi_items():
        grouped.setdefault(name, []).append(value)
    return Request(method=request.method, url=str(request.url), headers=Headers(grouped))


def stored_form(response: Response, default_ttl: float, max_stale: float) -> tuple[Response, float]:
    """The response as it is stored, and how long the storage must keep it.

    A recipient that caches a response without ``Date`` must add one (RFC 9110
    §6.6.1): the age of a stale answer is counted from it. A response with no
    freshness information of its own gets ``max-age=<default_ttl>``. It is kept
    for its freshness plus ``max_stale``, the longest it may answer a failed call.
    """
    from dataclasses import replace

    from hishel import Headers
    from hishel._core._spec import get_freshness_lifetime

    headers = {name: list(response.headers.get_list(name) or []) for name in response.headers}
    if "date" not in headers:
        headers["date"] = [formatdate(time.time(), usegmt=True)]
    if default_ttl and "cache-control" not in headers and "expires" not in headers:
        headers["cache-control"] = [f"max-age={int(default_ttl)}"]
    stored = replace(response, headers=Headers(headers))
    freshness = get_freshness_lifetime(stored, is_cache_shared=True) or 0
    return stored, freshness + max_stale


class ResponseCache:
    """The cache of one resilience layer: its storages (made on first use), its telemetry."""

    def __init__(
        self, settings: Settings, downstreams: Downstreams, instruments: Instruments, tracer: trace.Tracer
    ) -> None:
        self.url = settings.cache
        self.settings = settings
        self.downstreams = downstreams
        self.instruments = instruments
        self.tracer = tracer
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self._broken = False
        self._connection: sqlite3.Connection | None = None
        self._sync: BaseStorage | None = None
        self._async: AsyncBaseStorage | None = None
        # redis.asyncio clients belong to the event loop they were first used in: one per loop.
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncBaseStorage] = (
            weakref.WeakKeyDictionary()
        )
        forks.reset_in_child(self)

    def log_once(self, what: str) -> bool:
        with self._lock:
            if what in self._logged:
                return False
            self._logged.add(what)
            return True

    # --- which requests ---------------------------------------------------------------------------------

    def begin(self, request: httpx.Request) -> Lookup | None:
        """The request's lookup, or None: it goes out as if there were no cache (our own failure included).

        A lookup with ``bypass`` set (credentials) is counted, and its attempts marked, but goes out uncached.
        """
        if self._broken:
            return None
        try:
            downstream = self.downstreams.get(*address(request.url))
            lookup = Lookup(self, request, downstream)
            if self._credentials(request, downstream):
                lookup.bypass = True
                lookup.record(BYPASS)
            return lookup
        except Exception:
            if self.log_once("begin"):
                _logger.exception("otel-integration: could not look a request up in the cache; sending it uncached")
            return None

    @staticmethod
    def _credentials(request: httpx.Request, downstream: Downstream) -> bool:
        if any(name in request.headers for name in CREDENTIAL_HEADERS):
            return True
        # The auth forwarding hook runs later, inside the resilient transport: a request it would give
        # the incoming caller's Authorization is that caller's, and must not be answered for another.
        allowlist = downstream.settings.auth_forward_to
        return bool(allowlist) and auth.get_incoming_authorization() is not None and auth.allowed(downstream, allowlist)

    # --- storages -----------------------------------------------------------------------------------------

    def sync_storage(self) -> BaseStorage | None:
        """The storage of sync clients; None if it cannot be made (logged once, the cache is off)."""
        if self._sync is None:
            with self._lock:
                if self._sync is None and not self._broken:
                    self._sync = self._make(self._new_sync)
        return self._sync

    def async_storage(self) -> AsyncBaseStorage | None:
        """The storage of async clients; Redis: one per asyncio event loop (not available under trio)."""
        if not self.url.startswith(("redis", "rediss", "unix")):
            if self._async is None:
                with self._lock:
                    if self._async is None and not self._broken:
                        self._async = self._make(self._new_async_sqlite)
            return self._async
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if self.log_once("no-asyncio"):
                _logger.warning(
                    "otel-integration: a Redis cache needs asyncio for async clients; "
                    "this event loop's requests are not cached"
                )
            return None
        storage = self._per_loop.get(loop)
        if storage is None and not self._broken:
            storage = self._make(self._new_async_redis)
            if storage is not None:
                self._per_loop[loop] = storage
        return storage

    def _make(self, factory: Any) -> Any:
        try:
            return factory()
        except Exception:
            self._broken = True
            _logger.exception(
                "otel-integration: could not open the cache %s; responses are not cached", mask_secret_url(self.url)
            )
            return None

    def _sqlite(self) -> sqlite3.Connection:
        """One connection for the layer's sync and async storages (SQLite serialises its use)."""
        if self._connection is None:
            path = ":memory:" if self.url == "memory" else self.url[len("sqlite://"):]
            # Autocommit, as hishel opens its own; any thread, as hishel's sync storage does.
            self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        return self._connection

    def _max_size(self) -> int | None:
        return MEMORY_MAX_SIZE if self.url == "memory" else 1024**3

    def _new_sync(self) -> BaseStorage:
        from hishel import RedisStorage, SqliteStorage

        if self.url.startswith(("redis", "rediss", "unix")):
            import redis

            return RedisStorage(
                redis.Redis.from_url(self.url), default_ttl=None, key_prefix=KEY_PREFIX
            )
        return SqliteStorage(connection=self._sqlite(), max_size=self._max_size())

    def _new_async_sqlite(self) -> AsyncBaseStorage:
        import anysqlite
        from hishel import AsyncSqliteStorage

        return AsyncSqliteStorage(connection=anysqlite.Connection(self._sqlite()), max_size=self._max_size())

    def _new_async_redis(self) -> AsyncBaseStorage:
        import redis.asyncio
        from hishel import AsyncRedisStorage

        return AsyncRedisStorage(
            redis.asyncio.Redis.from_url(self.url), default_ttl=None, key_prefix=KEY_PREFIX
        )

    def close(self) -> None:
        with self._lock:
            storage, self._sync, self._async = self._sync, None, None
            self._per_loop.clear()
            connection, self._connection = self._connection, None
            self._broken = True
        try:
            if storage is not None:
                storage.close()
            if connection is not None:
                connection.close()
        except Exception:  # noqa: BLE001 - closing must not raise at shutdown
            _logger.debug("otel-integration: closing the cache failed", exc_info=True)

    def _after_fork(self) -> None:
        # A SQLite connection must not be used across fork(), and the lock may be held: the child starts over.
        self._lock = threading.Lock()
        self._connection = None
        self._sync = self._async = None
        self._per_loop = weakref.WeakKeyDictionary()
