"""One benchmark process: runs the scenarios it is given and prints one JSON line.

Started by `run.py`, either as ``python worker.py SPEC`` (bare httpx) or as
``opentelemetry-instrument python worker.py SPEC`` (the official distro or
ours, depending on the venv). SPEC is a JSON object::

    {"scenarios": ["sync", "async", ...], "url": "http://127.0.0.1:P/", ...}

Nothing here imports OpenTelemetry or otel_integration unless the scenario
needs it (``breaker`` is ours only), so the bare configuration stays bare.
The process leaves with ``os._exit`` after printing, skipping the SDK's
shutdown flush: with a black-holed collector that flush would wait for the
exporter timeout, and it is not part of any measurement.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time

import httpx
from fakes import _FakePool  # noqa: F401 - the fake pool (no network) shared with loops.py

perf = time.perf_counter_ns


def _stats(latencies_ns: list[int], wall_ns: int | None = None) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    n = len(ordered)
    total = wall_ns if wall_ns is not None else sum(ordered)
    return {
        "n": n,
        "mean_us": total / n / 1000,
        "p50_us": ordered[n // 2] / 1000,
        "p99_us": ordered[min(n - 1, (n * 99) // 100)] / 1000,
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _info() -> dict[str, object]:
    """What is really active in this process (so a misconfigured run shows)."""
    info: dict[str, object] = {
        "upstream_httpx_instrumented": hasattr(httpx.HTTPTransport.handle_request, "__wrapped__"),
        "otel_integration_layer": False,
        "tracer_provider": None,
        "distro": os.environ.get("OTEL_PYTHON_DISTRO"),
    }
    if "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        info["tracer_provider"] = type(trace.get_tracer_provider()).__name__
    if "otel_integration._client.layer" in sys.modules:
        from otel_integration._client import layer as layers

        info["otel_integration_layer"] = layers.active() is not None
    return info


def _headers_sent(url: str) -> dict[str, bool]:
    with httpx.Client() as client:
        request = client.get(url).request
    return {"traceparent": "traceparent" in request.headers, "x-request-id": "x-request-id" in request.headers}


def _flush() -> None:
    if "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        if flush is not None:
            flush(10_000)


# --- scenarios ----------------------------------------------------------------------


def sync_requests(spec: dict) -> dict:
    url, n = spec["url"], spec["n"]
    with httpx.Client() as client:
        for _ in range(spec["warmup"]):
            client.get(url)
        latencies = []
        append = latencies.append
        start = perf()
        for _ in range(n):
            t0 = perf()
            response = client.get(url)
            append(perf() - t0)
            assert response.status_code == 200
        wall = perf() - start
    return _stats(latencies, wall)


def async_requests(spec: dict) -> dict:
    url, n = spec["url"], spec["n"]

    async def run() -> dict:
        async with httpx.AsyncClient() as client:
            for _ in range(spec["warmup"]):
                await client.get(url)
            latencies = []
            append = latencies.append
            start = perf()
            for _ in range(n):
                t0 = perf()
                response = await client.get(url)
                append(perf() - t0)
                assert response.status_code == 200
            wall = perf() - start
        return _stats(latencies, wall)

    return asyncio.run(run())


def concurrent_requests(spec: dict) -> dict:
    """``concurrency`` tasks sharing one AsyncClient (pool as large as the concurrency)."""
    url, concurrency, per_task = spec["url"], spec["concurrency"], spec["per_task"]

    async def run() -> dict:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits) as client:

            async def task(count: int, latencies: list[int]) -> None:
                for _ in range(count):
                    t0 = perf()
                    response = await client.get(url)
                    latencies.append(perf() - t0)
                    assert response.status_code == 200

            await asyncio.gather(*(task(1, []) for _ in range(concurrency)))  # open the connections
            latencies: list[int] = []
            start = perf()
            await asyncio.gather(*(task(per_task, latencies) for _ in range(concurrency)))
            wall = perf() - start
        result = _stats(latencies)
        result["requests_per_s"] = len(latencies) / (wall / 1e9)
        result["wall_s"] = wall / 1e9
        return result

    return asyncio.run(run())


def breaker_rejections(spec: dict) -> dict:
    """Ours only: a call rejected by an open breaker vs one real request, sync and async."""
    from otel_integration._client import layer as layers
    from otel_integration.errors import CircuitOpenError

    layer = layers.active()
    assert layer is not None, "the otel_integration layer is not active"
    url, open_url, n = spec["url"], spec["open_url"], spec["n"]
    open_key = httpx.URL(open_url)
    breaker = layer.downstreams.get(open_key.host, open_key.port or 80).breaker
    result: dict = {}
    with httpx.Client() as client:
        for _ in range(layer.settings.breaker_threshold):  # 500s: breaker failures, not retried
            client.get(open_url + "fail")
        assert breaker.state() == "open", breaker.state()
        for _ in range(spec["warmup"]):
            client.get(url)
        real, rejected = [], []
        for _ in range(n):  # interleaved, so both see the same machine
            t0 = perf()
            client.get(url)
            t1 = perf()
            try:
                client.get(open_url)
            except CircuitOpenError:
                pass
            else:
                raise AssertionError("the breaker let a call through")
            rejected.append(perf() - t1)
            real.append(t1 - t0)
        result["sync_real"], result["sync_rejected"] = _stats(real), _stats(rejected)

    async def run() -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(spec["warmup"]):
                await client.get(url)
            real, rejected = [], []
            for _ in range(n):
                t0 = perf()
                await client.get(url)
                t1 = perf()
                try:
                    await client.get(open_url)
                except CircuitOpenError:
                    pass
                else:
                    raise AssertionError("the breaker let a call through")
                rejected.append(perf() - t1)
                real.append(t1 - t0)
            result["async_real"], result["async_rejected"] = _stats(real), _stats(rejected)

    asyncio.run(run())
    return result


def many_hosts(spec: dict) -> dict:
    """``spec["host_rounds"]`` rounds of requests, round-robin over ``spec["hosts"]`` hosts; RSS after each."""
    hosts = spec["hosts"]
    transport = httpx.HTTPTransport()
    transport._pool = _FakePool()  # type: ignore[assignment]
    urls = [f"http://h{i}.bench.invalid/" for i in range(hosts)]
    layer = None
    if "otel_integration._client.layer" in sys.modules:
        from otel_integration._client import layer as layers

        layer = layers.active()
    gc.collect()
    result: dict = {"rss_start_mb": _rss_mb(), "rounds": []}
    done = 0
    with httpx.Client(transport=transport) as client:
        for requests in spec["host_rounds"]:
            start = perf()
            for i in range(done, done + requests):
                client.get(urls[i % hosts])
            wall = perf() - start
            done += requests
            _flush()  # RSS of what is kept, not of spans waiting in the export queue
            gc.collect()
            entry = {"requests": requests, "total_requests": done, "rss_mb": _rss_mb(), "us_per_request": wall / requests / 1000}
            if layer is not None:
                entry["downstreams"] = len(layer.downstreams)
                entry["breakers"] = len(layer.downstreams)  # one breaker per downstream, in the same LRU
            result["rounds"].append(entry)
    if layer is not None:
        result["max_downstreams"] = layer.settings.max_downstreams
    return result


SCENARIOS = {
    "sync": sync_requests,
    "async": async_requests,
    "concurrent": concurrent_requests,
    "breaker": breaker_rejections,
    "many_hosts": many_hosts,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    out: dict = {"info": _info()}
    profile_to = os.environ.get("BENCH_PROFILE")  # a path: cProfile the scenarios (see docs/performance.md)
    for name in spec["scenarios"]:
        if profile_to:
            import cProfile

            profiler = cProfile.Profile()
            out[name] = profiler.runcall(SCENARIOS[name], spec)
            profiler.dump_stats(f"{profile_to}.{name}.prof")
        else:
            out[name] = SCENARIOS[name](spec)
    if spec.get("check_headers"):
        out["headers_sent"] = _headers_sent(spec["url"])
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
