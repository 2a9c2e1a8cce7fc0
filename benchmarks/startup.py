"""Start-up cost of `opentelemetry-instrument python -c pass`: ours vs the official distro.

    python benchmarks/startup.py              # ~10 min on 2 cores (instructions need valgrind)
    python benchmarks/startup.py --no-write   # print only

Two services, each with its own pair of venvs (`venvs.py`): a client-only
service (httpx, no framework) and a FastAPI service (FastAPI, uvicorn). For
each, the official distro and ours, same versions of everything shared:

* **instructions** (callgrind), in two parts, because callgrind drops the
  count of a process image that calls ``exec``: the *launcher* (the
  ``opentelemetry-instrument`` script up to its ``exec``, counted by running
  its ``run()`` with ``execl`` replaced by an exit) and the *program* (the
  exec'd ``python -c pass``: the launcher's sitecustomize loads the distro,
  the SDK and every installed instrumentation, then the SDK shuts down at
  exit). The total is their sum; each figure is run twice, and the two must
  agree within 0.5 %.
* **wall time**: ROUNDS rounds, each running every command once in a rotated
  order (so a noisy neighbour hits all alike), after one unmeasured run each;
  median, quartiles and extremes, and the ratio of the medians.
* **imports**: ``python -X importtime`` under both launchers (IMPORT_RUNS
  runs each, medians): the modules ours imports and the official distro does
  not, by cumulative import time; the input for lazy-import work.

Exporters are configured identically for both: OTLP over http/protobuf to a
local sink (`peers.py`), as a real service would export. The figures go to
``benchmarks/last_run/startup.json`` and the generated block of
docs/performance.md (and the README's summary) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import callgrind  # noqa: E402
import importtime  # noqa: E402
import linearity  # noqa: E402
import report  # noqa: E402
import venvs  # noqa: E402

OWNER = "benchmarks/startup.py"
PROFILES = {"client": "client-only service", "fastapi": "FastAPI service"}
ROUNDS = 30
IMPORT_RUNS = 7
PROGRAM = ["-c", "pass"]

# The launcher's own work, without its exec: the same entry point, with execl made an exit.
_LAUNCHER_ONLY = (
    "import os, sys\n"
    "import opentelemetry.instrumentation.auto_instrumentation as launcher\n"
    "launcher.execl = lambda *args: os._exit(0)\n"
    "sys.argv = ['opentelemetry-instrument', sys.executable, '-c', 'pass']\n"
    "launcher.run()\n"
)


@contextlib.contextmanager
def sink() -> Iterator[int]:
    """An OTLP/HTTP sink on 127.0.0.1 (peers.py, its own process); yields its port."""
    peers = subprocess.Popen([sys.executable, str(HERE / "peers.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert peers.stdout is not None
        yield json.loads(peers.stdout.readline())["sink"]
    finally:
        assert peers.stdin is not None
        peers.stdin.close()
        try:
            peers.wait(timeout=5)
        except subprocess.TimeoutExpired:
            peers.kill()


def environment(port: int, measured: bool = True) -> dict[str, str]:
    env = callgrind.clean_env(
        OTEL_SERVICE_NAME="bench",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",  # set for both: the official default is gRPC
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_SEMCONV_STABILITY_OPT_IN="http",
        PYTHONHASHSEED="0",
    )
    if measured:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def commands(profile: str) -> dict[str, list[str]]:
    official, ours = (venvs.VENVS / name for name in venvs.pair(profile))
    return {
        "python": [venvs.python(ours), *PROGRAM],
        "official": [venvs.launcher(official), venvs.python(official), *PROGRAM],
        "ours": [venvs.launcher(ours), venvs.python(ours), *PROGRAM],
    }


def workdir() -> Path:
    path = HERE / ".venvs" / "cwd"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- instructions -------------------------------------------------------------------------------


def _instruction_jobs(profile: str) -> dict[str, tuple[list[str], bool]]:
    """name -> (command, trace children)."""
    jobs: dict[str, tuple[list[str], bool]] = {}
    for distro, name in zip(("official", "ours"), venvs.pair(profile)):
        venv = venvs.VENVS / name
        jobs[f"{distro}/launcher"] = ([venvs.python(venv), "-c", _LAUNCHER_ONLY], False)
        jobs[f"{distro}/program"] = ([venvs.python(venv), venvs.launcher(venv), venvs.python(venv), *PROGRAM], True)
    jobs["python"] = ([venvs.python(venvs.VENVS / venvs.pair(profile)[1]), *PROGRAM], False)
    return jobs


def instructions(port: int, jobs_in_parallel: int) -> dict[str, dict[str, Any]]:
    jobs = [(profile, name, cmd, children) for profile in PROFILES for name, (cmd, children) in _instruction_jobs(profile).items()]
    runs = [job for job in jobs for _ in range(2)]  # twice: the two counts must agree

    def one(job: tuple[str, str, list[str], bool]) -> int:
        _, _, cmd, children = job
        return callgrind.counts(cmd, environment(port), workdir(), children=children).counts[-1]

    with ThreadPoolExecutor(max_workers=jobs_in_parallel) as pool:
        counted = list(pool.map(one, runs))
    out: dict[str, dict[str, Any]] = {p: {} for p in PROFILES}
    for i, (profile, name, _, _) in enumerate(jobs):
        a, b = counted[2 * i], counted[2 * i + 1]
        if abs(a - b) / max(a, b) > linearity.TOLERANCE:
            raise linearity.NonLinearError(f"start-up {profile}/{name}: two counts disagree ({a:,} vs {b:,}): not reporting")
        out[profile][name] = {"count": min(a, b), "repeat": [a, b]}
    for profile, r in out.items():
        for distro in ("official", "ours"):
            r[f"{distro}/total"] = {"count": r[f"{distro}/launcher"]["count"] + r[f"{distro}/program"]["count"]}
    return out


# --- wall time ----------------------------------------------------------------------------------


def _quantiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "p25": q[0], "p75": q[2], "min": min(values), "max": max(values), "n": len(values)}


def wall(port: int, rounds: int) -> dict[str, dict[str, Any]]:
    env = environment(port, measured=False)  # .pyc files exist after the warm-up; nothing to write
    every = [(profile, name, cmd) for profile in PROFILES for name, cmd in commands(profile).items()]
    for _, _, cmd in every:  # unmeasured: page cache, .pyc files
        subprocess.run(cmd, env=env, cwd=workdir(), check=True, capture_output=True)
    times: dict[tuple[str, str], list[float]] = {(p, n): [] for p, n, _ in every}
    for r in range(rounds):
        shift = r % len(every)
        for profile, name, cmd in every[shift:] + every[:shift]:
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, cwd=workdir(), check=True, capture_output=True)
            times[(profile, name)].append((time.perf_counter() - t0) * 1000)
    out: dict[str, dict[str, Any]] = {}
    for profile in PROFILES:
        per_round = [o / f for o, f in zip(times[(profile, "ours")], times[(profile, "official")])]
        out[profile] = {name: _quantiles(times[(profile, name)]) for name in ("python", "official", "ours")}
        out[profile]["per_round_ratio"] = _quantiles(per_round)
        out[profile]["raw_ms"] = {name: times[(profile, name)] for name in ("python", "official", "ours")}
    return out


# --- imports ------------------------------------------------------------------------------------


def imports(port: int, runs: int) -> dict[str, Any]:
    env = environment(port, measured=False)
    out: dict[str, Any] = {}
    for profile in PROFILES:
        cmds = commands(profile)
        samples: dict[str, list[list[importtime.Import]]] = {"official": [], "ours": []}
        for _ in range(runs):
            for distro in ("official", "ours"):  # alternating
                launcher, python_, *rest = cmds[distro]
                done = subprocess.run([launcher, python_, "-X", "importtime", *rest], env=env, cwd=workdir(), capture_output=True, text=True, check=True)
                samples[distro].append(importtime.parse(done.stderr))
        out[profile] = importtime.only_in(samples["ours"], samples["official"])
    return out


# --- report -------------------------------------------------------------------------------------


def summarize(ins: dict[str, Any], w: dict[str, Any]) -> dict[str, Any]:
    s = {}
    for profile in PROFILES:
        i = ins[profile]
        s[profile] = {
            "instructions_ratio": i["ours/total"]["count"] / i["official/total"]["count"],
            "program_ratio": i["ours/program"]["count"] / i["official/program"]["count"],
            "wall_ratio": w[profile]["ours"]["median"] / w[profile]["official"]["median"],
        }
    return s


def _m(count: int) -> str:
    return f"{count / 1e6:,.1f} M"


def render(result: dict[str, Any]) -> str:
    out = [report.meta_line(result["meta"]), ""]
    out += [
        "**Instructions** (callgrind; each count run twice, the two agree to "
        f"{result['max_repeat_disagreement']:.3%} or better):",
        "",
        "| service | plain `python -c pass` | official: launcher + program = total | ours: launcher + program = total | ours / official, total (program only) | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for profile, label in PROFILES.items():
        i, s = result["instructions"][profile], result["summary"][profile]
        parts = {d: " + ".join(_m(i[f"{d}/{k}"]["count"]) for k in ("launcher", "program")) + f" = {_m(i[f'{d}/total']['count'])}" for d in ("official", "ours")}
        out.append(
            f"| {label} | {_m(i['python']['count'])} | {parts['official']} | {parts['ours']} "
            f"| **{s['instructions_ratio']:.3f}** ({s['program_ratio']:.3f}) | {report.met(s['instructions_ratio'], report.TARGET_STARTUP)} |"
        )
    rounds = result["meta"]["rounds"]
    out += [
        "",
        f"**Wall time**, ms ({rounds} alternating rounds; median [p25–p75], min–max):",
        "",
        "| service | plain python | official | ours | ours / official (medians) | per-round ratio, median [p25–p75] | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]

    def q(x: dict[str, float]) -> str:
        return f"{x['median']:,.0f} [{x['p25']:,.0f}–{x['p75']:,.0f}], {x['min']:,.0f}–{x['max']:,.0f}"

    for profile, label in PROFILES.items():
        w, s = result["wall"][profile], result["summary"][profile]
        pr = w["per_round_ratio"]
        out.append(
            f"| {label} | {q(w['python'])} | {q(w['official'])} | {q(w['ours'])} | **{s['wall_ratio']:.3f}** "
            f"| {pr['median']:.3f} [{pr['p25']:.3f}–{pr['p75']:.3f}] | {report.met(s['wall_ratio'], report.TARGET_STARTUP)} |"
        )
    for profile, label in PROFILES.items():
        imp = result["imports"][profile]
        out += [
            "",
            f"**Imported by ours, not by the official distro: {label}** (`-X importtime`, medians of "
            f"{result['meta']['import_runs']} runs; {imp['modules']} modules). Where each such subtree starts; "
            f"*only ours* adds the self times of the modules in it that the official distro never imports "
            f"(the cumulative time also holds first imports of modules both import, such as httpx). Together "
            f"{imp['roots_extra_us'] / 1000:,.1f} ms:",
            "",
            "| module | cumulative µs | only ours, µs | imported by |",
            "|---|---:|---:|---|",
        ]
        for row in imp["roots"]:
            out.append(f"| `{row['module']}` | {row['cumulative_us']:,.0f} | {row['extra_us']:,.0f} | `{row['parent'] or '-'}` |")
        out += [
            "",
            f"The 30 largest of those {imp['modules']} modules by cumulative import time ({label}):",
            "",
            "| module | cumulative µs | self µs | imported by |",
            "|---|---:|---:|---|",
        ]
        for row in imp["all"][:30]:
            out.append(f"| `{row['module']}` | {row['cumulative_us']:,.0f} | {row['self_us']:,.0f} | `{row['parent'] or '-'}` |")
    out += ["", "Versions:", "", *report.render_versions(result["versions"])]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="wall-time rounds")
    parser.add_argument("--import-runs", type=int, default=IMPORT_RUNS, help="-X importtime runs per launcher")
    parser.add_argument("--jobs", type=int, default=2, help="callgrind runs in parallel")
    parser.add_argument("--no-write", action="store_true", help="print only: keep docs and last_run/ as they are")
    args = parser.parse_args(argv)
    if not callgrind.available():
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    started = time.monotonic()
    measured = report.meta(callgrind.version())  # the tree as the venvs get it, not as it is at the end
    for profile in PROFILES:
        for name in venvs.pair(profile):
            venvs.warm(venvs.ensure(name))
    with sink() as port:
        try:
            ins = instructions(port, args.jobs)
        except linearity.NonLinearError as error:
            print(f"[startup] refusing to report: {error}", file=sys.stderr)
            return 3
        print("[startup] instructions counted", flush=True)
        w = wall(port, args.rounds)
        print("[startup] wall time measured", flush=True)
        imp = imports(port, args.import_runs)
    repeats = [abs(a - b) / max(a, b) for p in ins.values() for v in p.values() if "repeat" in v for a, b in [v["repeat"]]]
    result = {
        "meta": {**measured, "rounds": args.rounds, "import_runs": args.import_runs, "seconds": round(time.monotonic() - started)},
        "instructions": ins,
        "max_repeat_disagreement": max(repeats),
        "wall": w,
        "imports": imp,
        "summary": summarize(ins, w),
        "versions": {p: report.venv_versions(p) for p in PROFILES},
    }
    markdown = render(result)
    print(markdown)
    if not args.no_write:
        print(f"[startup] results: {report.save('startup', result)}; docs updated")
        report.write_docs(OWNER, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
