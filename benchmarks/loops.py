"""The programs that instructions.py counts: one process = set-up, warm-up, then N units.

    python loops.py SCENARIO 100,1100,2100   # what callgrind counts (started by instructions.py)
    python loops.py SCENARIO N --check       # unmeasured: N checked units, then one JSON line of facts

A unit is one client call or one incoming request (see SCENARIOS). A counted
run makes a `callgrind.checkpoint()` after the warm-up and after 100, 1,100
and 2,100 units (the sizes given), so instructions.py gets the count at each
size from one process: the per-unit cost is the slope of that count over the
units, and set-up, warm-up and exit are in none of it. What would make the
count grow other than linearly is kept out of the counted loop:

* the warm-up (WARMUP units) creates every lazily built piece of state first
  (per-downstream breaker and budget, the server span processor added on the
  first request, Starlette's middleware stack, specialised bytecode);
* the garbage collector runs, as in a service, but only over what the units
  create: what start-up and warm-up left alive is frozen out of its reach
  (``gc.freeze``), since a full collection's cost depends on everything it
  traverses. With the collector off, the units' cyclic garbage piled up and
  made later units dearer (Flask under the official distro: slopes 1,416,763
  then 1,432,639 over 100/1,100/2,100 requests);
* exporters are off (OTEL_*_EXPORTER=none) and nothing logs per unit;
* the process ends with ``os._exit``: no SDK shutdown at exit.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fakes  # noqa: E402
from callgrind import checkpoint  # noqa: E402

WARMUP = 50
URL = "http://downstream.bench.invalid/"
DOWN_URL = "http://down.bench.invalid/"


@dataclass
class Unit:
    """One scenario, set up: ``one`` runs one unit (a coroutine function when ``is_async``)."""

    one: Callable[[], Any]
    is_async: bool = False
    pool: fakes._FakePool | None = None
    response: fakes.Response | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # filled by the scenario in --check mode


# --- client scenarios ---------------------------------------------------------------------------


def client() -> Unit:
    """One successful GET (200)."""
    pool = fakes._FakePool()
    http = fakes.client_with(pool)
    return Unit(lambda: http.get(URL), pool=pool)


def unavailable() -> Unit:
    """One GET answered 503 (the official distro returns it after its single attempt)."""
    pool = fakes.UnavailablePool()
    http = fakes.client_with(pool)
    return Unit(lambda: http.get(URL), pool=pool)


def flaky() -> Unit:
    """One GET whose first attempt gets a 503 and the second a 200 (ours retries it)."""
    pool = fakes.FlakyPool()
    http = fakes.client_with(pool)

    def one() -> None:
        if http.get(URL).status_code != 200:
            raise AssertionError("the 503 was not retried")

    return Unit(one, pool=pool)


def flaky_by_hand() -> Unit:
    """Two GETs, a 503 then a 200: the application retrying once by hand."""
    pool = fakes.FlakyPool()
    http = fakes.client_with(pool)

    def one() -> None:
        http.get(URL)
        http.get(URL)

    return Unit(one, pool=pool)


def rejected() -> Unit:
    """One GET to a downstream whose breaker is open: rejected without any I/O.

    Set-up, through public configuration only (instructions.py sets
    OTEL_INTEGRATION_BREAKER_THRESHOLD=1 and a long OPEN_SECONDS): one call to a
    host that refuses connections opens its breaker.
    """
    import httpx

    from otel_integration.errors import CircuitOpenError

    pool = fakes.RefusingPool()
    http = fakes.client_with(pool)
    try:
        http.get(DOWN_URL)
    except httpx.ConnectError:
        pass
    opened_after = pool.requests

    def one() -> None:
        try:
            http.get(DOWN_URL)
        except CircuitOpenError:
            return
        raise AssertionError("the open breaker let a call through")

    return Unit(one, pool=pool, facts={"attempts_to_open": opened_after})


# --- server scenarios -------------------------------------------------------------------------
# Apps are built after the launcher instrumented the frameworks, as in a service.


def starlette() -> Unit:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def index(request: Any) -> Any:
        return JSONResponse({"ok": True})

    one, response = fakes.asgi_driver(Starlette(routes=[Route("/", index)]))
    return Unit(one, is_async=True, response=response)


def fastapi() -> Unit:
    from fastapi import FastAPI

    app = FastAPI()

    # No return annotation: FastAPI would build a response model from it.
    @app.get("/")
    async def index():  # type: ignore[no-untyped-def]
        return {"ok": True}

    one, response = fakes.asgi_driver(app)
    return Unit(one, is_async=True, response=response)


def flask() -> Unit:
    from flask import Flask

    app = Flask("bench")

    @app.get("/")
    def index() -> dict[str, bool]:
        return {"ok": True}

    one, response = fakes.wsgi_driver(app)
    return Unit(one, response=response)


SCENARIOS: dict[str, Callable[[], Unit]] = {
    "client": client,
    "unavailable": unavailable,
    "flaky": flaky,
    "flaky-by-hand": flaky_by_hand,
    "rejected": rejected,
    "starlette": starlette,
    "fastapi": fastapi,
    "flask": flask,
}


# --- running ----------------------------------------------------------------------------------


def _runner(unit: Unit) -> Callable[[int], None]:
    if not unit.is_async:
        one = unit.one

        def run(n: int) -> None:
            for _ in range(n):
                one()

        return run
    loop = asyncio.new_event_loop()  # one loop for warm-up and the counted units

    async def repeat(n: int) -> None:
        for _ in range(n):
            await unit.one()

    return lambda n: loop.run_until_complete(repeat(n))


def _span_counter() -> Any:
    """A span processor counting ended spans by kind, for --check (only where the SDK is loaded)."""
    from opentelemetry.sdk.trace import SpanProcessor

    class SpanCounter(SpanProcessor):
        def __init__(self) -> None:
            self.kinds: dict[str, int] = {}
            self.resends: list[int] = []

        def on_end(self, span: Any) -> None:
            kind = span.kind.name
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if kind == "CLIENT":
                self.resends.append(int((span.attributes or {}).get("http.request.resend_count", 0)))

    return SpanCounter()


def check(unit: Unit, run: Callable[[int], None], n: int) -> dict[str, Any]:
    """Run ``n`` units watching spans and requests: what each configuration really does."""
    import httpx

    facts: dict[str, Any] = dict(unit.facts)
    tracer_provider: Any = None
    if "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        tracer_provider = trace.get_tracer_provider()
    facts["sdk"] = hasattr(tracer_provider, "add_span_processor")
    counter = _span_counter() if facts["sdk"] else None
    if counter is not None:
        tracer_provider.add_span_processor(counter)
    facts["upstream_httpx_instrumented"] = hasattr(httpx.HTTPTransport.handle_request, "__wrapped__")
    upstream = sys.modules.get("opentelemetry.instrumentation.httpx")
    if upstream is not None:
        # ours replaces its header normalisation (otel_integration/_client/upstream_speedups.py)
        facts["upstream_speedups"] = hasattr(upstream._normalize_headers, "__wrapped__")
    layer = None
    if "otel_integration._client.layer" in sys.modules:
        layer = sys.modules["otel_integration._client.layer"].active()
    facts["otel_integration_layer"] = layer is not None
    before = unit.pool.requests if unit.pool is not None else 0
    run(n)
    kinds = counter.kinds if counter is not None else {}
    facts["spans_per_unit"] = {kind: count / n for kind, count in sorted(kinds.items())}
    if counter is not None and counter.resends:
        facts["max_resend_count"] = max(counter.resends)
    if unit.pool is not None:
        facts["attempts_per_unit"] = (unit.pool.requests - before) / n
        if unit.pool.last is not None:
            sent = {name.lower() for name, _ in unit.pool.last.headers}
            facts["sent_traceparent"] = b"traceparent" in sent
            facts["sent_x_request_id"] = b"x-request-id" in sent
    if unit.response is not None:
        headers = dict(unit.response.headers)
        facts["status"] = unit.response.status
        facts["body"] = unit.response.body.decode("latin-1")
        facts["x_request_id_echoed"] = b"x-request-id" in headers
    return facts


def main(argv: list[str]) -> None:
    scenario, sizes = argv[0], [int(n) for n in argv[1].split(",")]
    checking = "--check" in argv[2:]
    unit = SCENARIOS[scenario]()
    run = _runner(unit)
    run(WARMUP)
    if checking:
        sys.stdout.write(json.dumps(check(unit, run, sizes[0])) + "\n")
    else:
        gc.collect()
        gc.freeze()
        checkpoint()
        done = 0
        for size in sizes:
            run(size - done)
            done = size
            checkpoint()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
