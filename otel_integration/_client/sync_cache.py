"""`CachingTransport`: hishel's RFC 9111 cache, with stale-if-error, around the sync resilient transport.

GENERATED from async_cache.py by scripts/gen_unasync.py: edit that file, then run the script.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import httpx
from hishel import BaseStorage, Entry, Headers, Request, Response
from hishel.httpx import CacheTransport

from otel_integration._client import cache as caching
from otel_integration._client.sync_transport import ResilientTransport
from otel_integration._client.cache import BYPASS, HIT, MISS, Lookup, ResponseCache
from otel_integration._client.layer import ResilienceLayer
from otel_integration._client.tracing import current_cache_outcome


class CachingTransport(httpx.BaseTransport):
    """Answers what it can from the layer's cache; sends the rest through ``transport``."""

    caching = True  # the instrumentor never wraps it again

    def __init__(self, transport: ResilientTransport, layer: ResilienceLayer) -> None:
        assert layer.cache is not None
        self.transport = transport
        self.layer = layer
        self.cache: ResponseCache = layer.cache

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        lookup = self.cache.begin(request)
        if lookup is not None and lookup.bypass:
            return self._bypass(lookup)
        storage = self.cache.sync_storage() if lookup is not None else None
        if lookup is None or storage is None:
            return self.transport.handle_request(request)
        send = _Send(self.transport)
        hishel = CacheTransport(send, storage=_StoredForm(storage, lookup), rfc=caching.rfc_options())
        request.extensions = {**request.extensions, "caching": {"key": lookup.key}}
        token = current_cache_outcome.set(MISS if lookup.counted else None)
        try:
            response = hishel.handle_request(request)
        except Exception as error:
            if error is not send.error:
                if send.sent:
                    raise  # after the call went out: what it raised is the caller's
                # hishel itself failed before sending: the request goes out uncached, as without a cache.
                if self.cache.log_once("hishel"):
                    caching._logger.exception("otel-integration: the cache failed; sending the request uncached")
                return self.transport.handle_request(request)
            if lookup.may_serve_stale(error):
                stale = self._stale(lookup, storage, caching.reason_of(error))
                if stale is not None:
                    return stale
            lookup.record(MISS)
            raise
        finally:
            current_cache_outcome.reset(token)
        status = response.extensions.get("caching") or {}
        if status.get("from_cache") and not status.get("revalidated"):
            lookup.record(HIT, response)
            return response
        if lookup.may_replace(response):
            stale = self._stale(lookup, storage, str(response.status_code))
            if stale is not None:
                response.close()
                return stale
        lookup.record(MISS, response)
        return response

    def _bypass(self, lookup: Lookup) -> httpx.Response:
        """A request with credentials: neither looked up nor stored; its attempts' spans say so."""
        token = current_cache_outcome.set(BYPASS if lookup.counted else None)
        try:
            return self.transport.handle_request(lookup.request)
        finally:
            current_cache_outcome.reset(token)

    def _stale(self, lookup: Lookup, storage: BaseStorage, reason: str) -> httpx.Response | None:
        """A stored response for this failed GET, or None (never an error of its own)."""
        try:
            chosen = lookup.choose_stale(storage.get_entries(lookup.key))
            if chosen is None:
                return None
            entry, age = chosen
            content = b"".join([chunk for chunk in _chunks(entry)])
            return lookup.stale_response(entry, age, content, reason)
        except Exception:
            if self.cache.log_once("stale"):
                caching._logger.exception("otel-integration: could not read a stale response from the cache")
            return None

    def close(self) -> None:
        self.transport.close()  # the storage is the layer's, shared by every client


def _chunks(entry: Entry) -> Any:
    stream: Any = entry.response.stream
    if stream is not None:
        for chunk in stream:
            yield chunk


class _Send(httpx.BaseTransport):
    """What hishel calls to send: the resilient transport, noting that the call went out and what it raised."""

    def __init__(self, transport: ResilientTransport) -> None:
        self.transport = transport
        self.sent = False
        self.error: BaseException | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent = True
        try:
            return self.transport.handle_request(request)
        except BaseException as error:
            self.error = error
            raise


class _StoredForm(BaseStorage):
    """The layer's storage, storing each response in its `cache.stored_form` for as long as it may serve.

    hishel passes one TTL per request, fixed before the response is known; the
    lifetime depends on the response (its freshness plus ``CACHE_MAX_STALE``),
    so it is decided here, when the entry is created.
    """

    def __init__(self, storage: BaseStorage, lookup: Lookup) -> None:
        super().__init__()
        self.storage = storage
        self.lookup = lookup

    def create_entry(
        self, request: Request, response: Response, key: str, *, ttl: float | None = None, tti: float | None = None
    ) -> Entry:
        stored, lifetime = caching.stored_form(response, self.lookup.default_ttl, self.lookup.max_stale)
        if lifetime <= 0:
            return Entry(id=uuid.uuid4(), request=request, response=response)  # useless once stored: not stored
        entry = self.storage.create_entry(request, stored, key, ttl=lifetime, tti=tti)
        # The caller of this miss gets the headers the downstream sent; only the stored copy has ours.
        return replace(entry, response=replace(entry.response, headers=response.headers))

    def get_entries(self, key: str) -> list[Entry]:
        return self.storage.get_entries(key)

    def update_headers(self, id: uuid.UUID, headers: Headers) -> None:  # noqa: A002 - hishel's name
        self.storage.update_headers(id, headers)

    def remove_entry(self, id: uuid.UUID) -> None:  # noqa: A002 - hishel's name
        self.storage.remove_entry(id)

    def close(self) -> None:
        pass  # the layer's storage outlives each request
