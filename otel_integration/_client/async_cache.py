"""`AsyncCachingTransport`: hishel's RFC 9111 cache, with stale-if-error, around the resilient transport.

This file is the source of both caching transports: ``scripts/gen_unasync.py``
writes the sync twin, `CachingTransport` in ``sync_cache.py``, from it. The
decisions are in `cache.py`; only I/O lives here.

The instrumentor puts it outside `AsyncResilientTransport` when
``OTEL_INTEGRATION_CACHE`` is set::

    AsyncCachingTransport           hit: answered here (no attempt, no breaker admission)
      hishel AsyncCacheTransport    RFC 9111: freshness, validation, what may be stored
        _AsyncSend                  notes that the call went out (and how it failed)
          AsyncResilientTransport   retries, breaker, probe
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import httpx
from hishel import AsyncBaseStorage, Entry, Headers, Request, Response
from hishel.httpx import AsyncCacheTransport

from otel_integration._client import cache as caching
from otel_integration._client.async_transport import AsyncResilientTransport
from otel_integration._client.cache import BYPASS, HIT, MISS, Lookup, ResponseCache
from otel_integration._client.layer import ResilienceLayer
from otel_integration._client.tracing import current_cache_outcome


class AsyncCachingTransport(httpx.AsyncBaseTransport):
    """Answers what it can from the layer's cache; sends the rest through ``transport``."""

    caching = True  # the instrumentor never wraps it again

    def __init__(self, transport: AsyncResilientTransport, layer: ResilienceLayer) -> None:
        assert layer.cache is not None
        self.transport = transport
        self.layer = layer
        self.cache: ResponseCache = layer.cache

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lookup = self.cache.begin(request)
        if lookup is not None and lookup.bypass:
            return await self._bypass(lookup)
        storage = self.cache.async_storage() if lookup is not None else None
        if lookup is None or storage is None:
            return await self.transport.handle_async_request(request)
        send = _AsyncSend(self.transport)
        hishel = AsyncCacheTransport(send, storage=_AsyncStoredForm(storage, lookup), rfc=caching.rfc_options())
        request.extensions = {**request.extensions, "caching": {"key": lookup.key}}
        token = current_cache_outcome.set(MISS if lookup.counted else None)
        try:
            response = await hishel.handle_async_request(request)
        except Exception as error:
            if error is not send.error:
                if send.sent:
                    raise  # after the call went out: what it raised is the caller's
                # hishel itself failed before sending: the request goes out uncached, as without a cache.
                if self.cache.log_once("hishel"):
                    caching._logger.exception("otel-integration: the cache failed; sending the request uncached")
                return await self.transport.handle_async_request(request)
            if lookup.may_serve_stale(error):
                stale = await self._stale(lookup, storage, caching.reason_of(error))
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
            stale = await self._stale(lookup, storage, str(response.status_code))
            if stale is not None:
                await response.aclose()
                return stale
        lookup.record(MISS, response)
        return response

    async def _bypass(self, lookup: Lookup) -> httpx.Response:
        """A request with credentials: neither looked up nor stored; its attempts' spans say so."""
        token = current_cache_outcome.set(BYPASS if lookup.counted else None)
        try:
            return await self.transport.handle_async_request(lookup.request)
        finally:
            current_cache_outcome.reset(token)

    async def _stale(self, lookup: Lookup, storage: AsyncBaseStorage, reason: str) -> httpx.Response | None:
        """A stored response for this failed GET, or None (never an error of its own)."""
        try:
            chosen = lookup.choose_stale(await storage.get_entries(lookup.key))
            if chosen is None:
                return None
            entry, age = chosen
            content = b"".join([chunk async for chunk in _chunks(entry)])
            return lookup.stale_response(entry, age, content, reason)
        except Exception:
            if self.cache.log_once("stale"):
                caching._logger.exception("otel-integration: could not read a stale response from the cache")
            return None

    async def aclose(self) -> None:
        await self.transport.aclose()  # the storage is the layer's, shared by every client


async def _chunks(entry: Entry) -> Any:
    stream: Any = entry.response.stream
    if stream is not None:
        async for chunk in stream:
            yield chunk


class _AsyncSend(httpx.AsyncBaseTransport):
    """What hishel calls to send: the resilient transport, noting that the call went out and what it raised."""

    def __init__(self, transport: AsyncResilientTransport) -> None:
        self.transport = transport
        self.sent = False
        self.error: BaseException | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent = True
        try:
            return await self.transport.handle_async_request(request)
        except BaseException as error:
            self.error = error
            raise


class _AsyncStoredForm(AsyncBaseStorage):
    """The layer's storage, storing each response in its `cache.stored_form` for as long as it may serve.

    hishel passes one TTL per request, fixed before the response is known; the
    lifetime depends on the response (its freshness plus ``CACHE_MAX_STALE``),
    so it is decided here, when the entry is created.
    """

    def __init__(self, storage: AsyncBaseStorage, lookup: Lookup) -> None:
        super().__init__()
        self.storage = storage
        self.lookup = lookup

    async def create_entry(
        self, request: Request, response: Response, key: str, *, ttl: float | None = None, tti: float | None = None
    ) -> Entry:
        stored, lifetime = caching.stored_form(response, self.lookup.default_ttl, self.lookup.max_stale)
        if lifetime <= 0:
            return Entry(id=uuid.uuid4(), request=request, response=response)  # useless once stored: not stored
        entry = await self.storage.create_entry(request, stored, key, ttl=lifetime, tti=tti)
        # The caller of this miss gets the headers the downstream sent; only the stored copy has ours.
        return replace(entry, response=replace(entry.response, headers=response.headers))

    async def get_entries(self, key: str) -> list[Entry]:
        return await self.storage.get_entries(key)

    async def update_headers(self, id: uuid.UUID, headers: Headers) -> None:  # noqa: A002 - hishel's name
        await self.storage.update_headers(id, headers)

    async def remove_entry(self, id: uuid.UUID) -> None:  # noqa: A002 - hishel's name
        await self.storage.remove_entry(id)

    async def close(self) -> None:
        pass  # the layer's storage outlives each request
