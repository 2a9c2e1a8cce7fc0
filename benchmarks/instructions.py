"""Hot-path cost in CPU instructions: deterministic, unlike wall time on a shared VM.

    python benchmarks/instructions.py            # needs valgrind (Debian: apt-get install valgrind)

Each configuration runs the same loop of sequential sync requests under
`opentelemetry-instrument` and valgrind's callgrind, which counts executed
instructions. No network: a real `httpx.HTTPTransport` whose httpcore pool is
replaced by a fake that answers 200 (the `_FakePool` of worker.py), so httpx,
the upstream instrumentation and our layer run for real. Exporters are off
(identical for all), garbage collection is off during the loop, and the
per-request figure is the slope between two request counts, so start-up and
warm-up cancel out. The same binary and inputs give the same count (to a few
parts per million here), whatever else the machine is doing.

Configurations: `official` (opentelemetry-distro), `ours` (this distro),
`ours-no-layer` (this distro with its two instrumentors disabled: what the
distro's defaults, span processor and propagator cost without the retry
transport and the server hooks).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import venvs  # noqa: E402

LOOP = """
import gc, sys, httpx
sys.path.insert(0, {here!r})
from worker import _FakePool
transport = httpx.HTTPTransport()
transport._pool = _FakePool()
client = httpx.Client(transport=transport)
for _ in range(50):
    client.get("http://h.bench.invalid/")
gc.collect()
gc.disable()
for _ in range(int(sys.argv[1])):
    client.get("http://h.bench.invalid/")
"""

CONFIGS = {
    "official": ("official", {}),
    "ours": ("ours", {}),
    "ours-no-layer": ("ours", {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "otel_integration_httpx,otel_integration_server"}),
}


def count(venv: Path, requests: int, extra_env: dict[str, str], script: Path) -> int:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OTEL_SERVICE_NAME": "bench",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http",
        "PYTHONHASHSEED": "0",
        **extra_env,
    }
    command = [
        "valgrind", "--tool=callgrind", "--trace-children=yes", "--callgrind-out-file=/dev/null",
        venvs.python(venv), venvs.launcher(venv), venvs.python(venv), str(script), str(requests),
    ]
    done = subprocess.run(command, env=env, cwd=HERE, capture_output=True, text=True, timeout=1800)
    totals = re.findall(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or not totals:
        raise RuntimeError(f"callgrind run failed:\n{done.stderr[-2000:]}")
    return int(totals[-1])  # the last process: the program the launcher exec'd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=int, default=100, help="requests in the short run")
    parser.add_argument("--high", type=int, default=1100, help="requests in the long run")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    script = HERE / "results" / "instructions_loop.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(LOOP.format(here=str(HERE)))
    paths = {name: venvs.ensure(name) for name in ("official", "ours")}
    jobs = [(config, n) for config in CONFIGS for n in (args.low, args.high)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(
            zip(jobs, pool.map(lambda job: count(paths[CONFIGS[job[0]][0]], job[1], CONFIGS[job[0]][1], script), jobs))
        )
    per_request = {c: (results[(c, args.high)] - results[(c, args.low)]) / (args.high - args.low) for c in CONFIGS}
    print("| configuration | instructions per request | / official |")
    print("|---|---:|---:|")
    for config, value in per_request.items():
        print(f"| {config} | {value:,.0f} | {value / per_request['official']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
