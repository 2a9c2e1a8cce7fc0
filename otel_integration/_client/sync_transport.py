"""`ResilientTransport`: retries, circuit breaker and request ID around any sync httpx transport.

GENERATED from async_transport.py by scripts/gen_unasync.py: edit that file, then run the script.
"""

from __future__ import annotations

import httpx

from otel_integration._client.call import AttemptOutcome, Call
from otel_integration._client.layer import ResilienceLayer, current


class ResilientTransport(httpx.BaseTransport):
    """Wraps ``transport`` (default: a new `httpx.HTTPTransport`) with the resilience layer.

    ``layer``: the instrumentation's, else one built once from the
    ``OTEL_INTEGRATION_*`` environment.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None, layer: ResilienceLayer | None = None) -> None:
        self.transport = transport if transport is not None else httpx.HTTPTransport()
        self.layer = layer if layer is not None else current()
        # The upstream instrumentation measures this transport: its failed attempts are ours to record.
        self._measured = isinstance(self.transport, httpx.HTTPTransport)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = Call.begin(self.layer, request, self._measured)
        if call is None:
            return self.transport.handle_request(request)
        refused = call.admit()
        if refused is not None:
            raise refused
        result = self._attempt(call)
        if isinstance(result, AttemptOutcome):
            return self._retry(call, result)
        return call.respond(result)

    def _attempt(self, call: Call, *, in_loop: bool = False) -> httpx.Response | AttemptOutcome:
        """The final response, or the outcome to retry; a final error is raised.

        ``in_loop`` (a retry, inside stamina's loop): a final error is returned as
        a final outcome instead, for `Call.finish` to raise once the loop is left.
        Raised inside it, tenacity would keep it in its retry state, which the
        error's traceback holds: a cycle keeping the request alive until the
        garbage collector runs.
        """
        call.start()
        try:
            response = self.transport.handle_request(call.request)
        except BaseException as error:
            outcome = call.failed(error)
            if outcome is None:
                if in_loop and isinstance(error, Exception):
                    return call.final(error)
                raise call.raised(error)  # noqa: B904 - the twin's cause is set: it is the same failure
            return outcome
        return call.answered(response) or response

    def _retry(self, call: Call, outcome: AttemptOutcome) -> httpx.Response:
        answer: httpx.Response | None = None
        try:
            for attempt in call.retrying():
                with attempt:
                    if attempt.num == 1:
                        raise outcome  # replay: stamina owns the loop from the first failure on
                    if not call.readmit(outcome):
                        break  # refused after the wait: the last outcome stands
                    if outcome.response is not None:
                        _discard(outcome.response)
                    result = self._attempt(call, in_loop=True)
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
                outcome.response.close()
            raise
        return call.finish(outcome) if answer is None else call.respond(answer)

    def close(self) -> None:
        self.transport.close()


def _discard(response: httpx.Response) -> None:
    """Read and close a response that will not be returned, so its connection goes back to the pool."""
    try:
        response.read()
    except httpx.HTTPError:
        pass
    finally:
        response.close()
