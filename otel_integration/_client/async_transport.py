"""`AsyncResilientTransport`: retries, circuit breaker and request ID around any async httpx transport.

This file is the source of both transports: ``scripts/gen_unasync.py`` writes
the sync twin, `ResilientTransport` in ``sync_transport.py``, from it. Only
I/O lives here: every decision is the call core's (`call.py`).

The instrumentor puts every client's transports behind one; it can also be
composed by hand, like httpx's own transports::

    client = httpx.AsyncClient(transport=AsyncResilientTransport(httpx.AsyncHTTPTransport()))

Per-request overrides go in ``request.extensions["otel_integration"]``: a dict
with any of ``retry`` (False: no retry), ``attempts`` (1 to 100) and
``deadline`` (seconds).
"""

from __future__ import annotations

import httpx
from anyio.lowlevel import checkpoint

from otel_integration._client.call import AttemptOutcome, Call
from otel_integration._client.layer import ResilienceLayer, current


class AsyncResilientTransport(httpx.AsyncBaseTransport):
    """Wraps ``transport`` (default: a new `httpx.AsyncHTTPTransport`) with the resilience layer.

    ``layer``: the instrumentation's, else one built once from the
    ``OTEL_INTEGRATION_*`` environment.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, layer: ResilienceLayer | None = None) -> None:
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self.layer = layer if layer is not None else current()
        # The upstream instrumentation measures this transport: its failed attempts are ours to record.
        self._measured = isinstance(self.transport, httpx.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = Call.begin(self.layer, request, self._measured)
        if call is None:
            return await self.transport.handle_async_request(request)
        refused = call.admit()
        if refused is not None:
            await checkpoint()  # a tight loop of refused calls must still let other tasks run
            raise refused
        result = await self._attempt(call)
        if isinstance(result, AttemptOutcome):
            return await self._retry(call, result)
        return call.respond(result)

    async def _attempt(self, call: Call, *, in_loop: bool = False) -> httpx.Response | AttemptOutcome:
        """The final response, or the outcome to retry; a final error is raised.

        ``in_loop`` (a retry, inside stamina's loop): a final error is returned as
        a final outcome instead, for `Call.finish` to raise once the loop is left.
        Raised inside it, tenacity would keep it in its retry state, which the
        error's traceback holds: a cycle keeping the request alive until the
        garbage collector runs.
        """
        call.start()
        try:
            response = await self.transport.handle_async_request(call.request)
        except BaseException as error:
            outcome = call.failed(error)
            if outcome is None:
                if in_loop and isinstance(error, Exception):
                    return call.final(error)
                raise call.raised(error)  # noqa: B904 - the twin's cause is set: it is the same failure
            return outcome
        return call.answered(response) or response

    async def _retry(self, call: Call, outcome: AttemptOutcome) -> httpx.Response:
        answer: httpx.Response | None = None
        try:
            async for attempt in call.retrying():
                with attempt:
                    if attempt.num == 1:
                        raise outcome  # replay: stamina owns the loop from the first failure on
                    if not call.readmit(outcome):
                        break  # refused after the wait: the last outcome stands
                    if outcome.response is not None:
                        await _discard(outcome.response)
                    result = await self._attempt(call, in_loop=True)
                    if isinstance(result, AttemptOutcome):
                        outcome = result
                        if outcome.final:
                            break  # the last error: raised by finish, outside stamina's loop
                        raise outcome
                    answer = result  # stamina's loop ends: the attempt did not raise
        except AttemptOutcome as last:  # stamina stopped retrying
            outcome = last
        except BaseException:
            # Cancelled while waiting: the held response must not keep its connection.
            if outcome.response is not None:
                await outcome.response.aclose()
            raise
        return call.finish(outcome) if answer is None else call.respond(answer)

    async def aclose(self) -> None:
        await self.transport.aclose()


async def _discard(response: httpx.Response) -> None:
    """Read and close a response that will not be returned, so its connection goes back to the pool."""
    try:
        await response.aread()
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()
