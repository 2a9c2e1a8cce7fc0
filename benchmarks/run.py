"""Overhead benchmark: bare httpx vs the official OpenTelemetry distro vs ours.

    python benchmarks/run.py            # full run, ~10 min on 2 cores; writes its block in docs/performance.md
    python benchmarks/run.py --quick    # every scenario at tiny N, < 30 s (after the venvs exist); writes no doc

Any Python >= 3.10 can run it: the first run builds two venvs under
``benchmarks/.venvs/`` (see `venvs.py`, needs PyPI once). The report is
printed as Markdown and written as JSON to ``benchmarks/results/last.json``
(``--json PATH`` to change). See docs/performance.md for what each number
means.

Every measurement runs in a fresh process per configuration, against peers
in another process (`peers.py`), and configurations alternate within each
round (A B C, B C A, C A B, ...), so a noisy neighbour hits all of them
alike. Tables show medians over rounds; ratios are ratios of those medians,
with the range of the per-round ratios in brackets.

It uses the client-only venvs (``official``, ``ours``). Start-up is measured
by `startup.py`, per-call costs that wall time here cannot resolve by
`instructions.py`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import venvs  # noqa: E402

WORKER = str(HERE / "worker.py")
PEERS = str(HERE / "peers.py")
CONFIGS = ("bare", "official", "ours")
# Working directory of every benchmark process. Not the repository root: its
# otel_integration.egg-info would put our distro's entry points on the
# official configuration's sys.path ('' is the working directory).
CWD = str(HERE)

# Sizes: (quick, full).
SIZES: dict[str, tuple[Any, Any]] = {
    "rounds": (1, 5),
    "n": (30, 1000),  # sequential requests per process and client kind
    "warmup": (10, 200),
    "concurrency": (20, 200),  # quick: 20, so the smoke test stays fast
    "per_task": (1, 2),  # measured requests per concurrent task (x200), after one warm-up request each
    "breaker_rounds": (1, 3),
    "breaker_n": (30, 1000),
    "collector_rounds": (1, 3),
    "collector_n": (30, 1500),
    "hosts": (200, 10_000),
    # Requests per round, per configuration: ours gets a 100k-request round then two
    # more that revisit every host twice (flat RSS?); the official distro the 100k
    # round (same upstream SDK, for comparison); bare httpx one round (baseline).
    "host_rounds": (
        {"bare": [400], "official": [1000], "ours": [1000, 400, 400]},
        {"bare": [20_000], "official": [100_000], "ours": [100_000, 20_000, 20_000]},
    ),
}

# Targets from the issue.
TARGET_HAPPY = 1.05
TARGET_COLLECTOR = 1.05


def _size(name: str, quick: bool) -> Any:
    return SIZES[name][0 if quick else 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    def __init__(self, quick: bool, log=print) -> None:
        self.quick = quick
        self.log = log
        self.venv = {"official": venvs.ensure("official", log), "ours": venvs.ensure("ours", log)}
        self.peers: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    # --- processes ------------------------------------------------------------

    def start_peers(self) -> None:
        self.peers = subprocess.Popen(
            [sys.executable, PEERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.peers.stdout is not None
        self.ports = json.loads(self.peers.stdout.readline())

    def stop_peers(self) -> None:
        if self.peers is not None:
            assert self.peers.stdin is not None
            self.peers.stdin.close()
            try:
                self.peers.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.peers.kill()
            self.peers = None

    def env(self, collector: str = "sink", **extra: str) -> dict[str, str]:
        """The environment of every benchmark process: identical exporter settings for all."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}
        env.update(
            {
                "OTEL_SERVICE_NAME": "bench",
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_METRICS_EXPORTER": "otlp",
                "OTEL_LOGS_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.ports[collector]}",
                # Export metrics during the measurement, not only at exit.
                "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                "OTEL_SEMCONV_STABILITY_OPT_IN": "http",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.update(extra)
        return env

    def command(self, config: str, *args: str) -> list[str]:
        if config == "bare":
            return [venvs.python(self.venv["ours"]), *args]
        venv = self.venv[config]
        return [venvs.launcher(venv), venvs.python(venv), *args]

    def worker(self, config: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        cmd = self.command(config, WORKER, json.dumps(spec))
        done = subprocess.run(cmd, env=env or self.env(), cwd=CWD, capture_output=True, text=True, timeout=600)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{config} worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(lines[-1])

    def url(self, name: str = "target") -> str:
        return f"http://127.0.0.1:{self.ports[name]}/"

    # --- scenarios --------------------------------------------------------------

    def happy(self) -> dict[str, Any]:
        """Sequential sync and async requests, and 200 concurrent async requests."""
        q = self.quick
        spec = {
            "scenarios": ["sync", "async", "concurrent"],
            "url": self.url(),
            "n": _size("n", q),
            "warmup": _size("warmup", q),
            "concurrency": _size("concurrency", q),
            "per_task": _size("per_task", q),
            "check_headers": True,
        }
        runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
        rounds = _size("rounds", q)
        for r in range(rounds):
            order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
            for config in order:
                runs[config].append(self.worker(config, spec))
            self.log(f"[happy] round {r + 1}/{rounds} done")
        return {"spec": spec, "runs": runs}

    def breaker(self) -> dict[str, Any]:
        q = self.quick
        spec = {
            "scenarios": ["breaker"],
            "url": self.url(),
            "open_url": self.url("target2"),
            "n": _size("breaker_n", q),
            "warmup": _size("warmup", q),
        }
        env = self.env(OTEL_INTEGRATION_BREAKER_OPEN_SECONDS="3600")
        runs = []
        for r in range(_size("breaker_rounds", q)):
            runs.append(self.worker("ours", spec, env)["breaker"])
        self.log("[breaker] done")
        return {"spec": spec, "runs": runs}

    def collector(self) -> dict[str, Any]:
        """Ours, sequential sync and async requests, collector up / closed port / black hole."""
        q = self.quick
        spec = {"scenarios": ["sync", "async"], "url": self.url(), "n": _size("collector_n", q), "warmup": _size("warmup", q)}
        variants = {"up": "sink", "down": "closed", "blackhole": "blackhole"}
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        names = list(variants)
        for r in range(_size("collector_rounds", q)):
            for variant in names[r % 3 :] + names[: r % 3]:
                runs[variant].append(self.worker("ours", spec, self.env(variants[variant])))
        self.log("[collector] done")
        return {"spec": spec, "runs": runs}

    def memory(self) -> dict[str, Any]:
        q = self.quick
        spec: dict[str, Any] = {"scenarios": ["many_hosts"], "hosts": _size("hosts", q)}
        runs = {}
        for config in CONFIGS:
            spec["host_rounds"] = _size("host_rounds", q)[config]
            runs[config] = self.worker(config, spec)["many_hosts"]
            self.log(f"[memory] {config} done")
        return {"spec": spec, "runs": runs}


# --- the report ---------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    happy = raw["happy"]["runs"]
    for kind in ("sync", "async"):
        row: dict[str, Any] = {}
        for config in CONFIGS:
            row[config] = {
                "mean_us": median([r[kind]["mean_us"] for r in happy[config]]),
                "p50_us": median([r[kind]["p50_us"] for r in happy[config]]),
                "p99_us": median([r[kind]["p99_us"] for r in happy[config]]),
            }
        per_round = [
            _ratio(o[kind]["mean_us"], f[kind]["mean_us"]) for o, f in zip(happy["ours"], happy["official"])
        ]
        row["ours_vs_official"] = _ratio(row["ours"]["mean_us"], row["official"]["mean_us"])
        row["ours_vs_official_rounds"] = [min(per_round), max(per_round)]
        row["official_vs_bare"] = _ratio(row["official"]["mean_us"], row["bare"]["mean_us"])
        row["ours_vs_bare"] = _ratio(row["ours"]["mean_us"], row["bare"]["mean_us"])
        row["ours_minus_official_us"] = row["ours"]["mean_us"] - row["official"]["mean_us"]
        row["target_met"] = row["ours_vs_official"] <= TARGET_HAPPY
        s[kind] = row
    conc: dict[str, Any] = {}
    for config in CONFIGS:
        conc[config] = {
            "requests_per_s": median([r["concurrent"]["requests_per_s"] for r in happy[config]]),
            "p50_us": median([r["concurrent"]["p50_us"] for r in happy[config]]),
            "p99_us": median([r["concurrent"]["p99_us"] for r in happy[config]]),
        }
    conc["ours_vs_official_throughput"] = _ratio(conc["ours"]["requests_per_s"], conc["official"]["requests_per_s"])
    conc["bare_vs_ours_throughput"] = _ratio(conc["bare"]["requests_per_s"], conc["ours"]["requests_per_s"])
    conc["concurrency"] = raw["happy"]["spec"]["concurrency"]
    s["concurrent"] = conc
    s["checks"] = {c: {**happy[c][0]["info"], **happy[c][0].get("headers_sent", {})} for c in CONFIGS}

    b = raw["breaker"]["runs"]
    s["breaker"] = {}
    for kind in ("sync", "async"):
        rejected = median([r[f"{kind}_rejected"]["mean_us"] for r in b])
        real = median([r[f"{kind}_real"]["mean_us"] for r in b])
        s["breaker"][kind] = {"rejected_us": rejected, "real_us": real, "ratio": _ratio(rejected, real)}

    col = raw["collector"]["runs"]
    s["collector"] = {}
    for kind in ("sync", "async"):
        row = {v: {"mean_us": median([r[kind]["mean_us"] for r in runs]), "p99_us": median([r[kind]["p99_us"] for r in runs])} for v, runs in col.items()}
        row["down_vs_up"] = _ratio(row["down"]["mean_us"], row["up"]["mean_us"])
        row["blackhole_vs_up"] = _ratio(row["blackhole"]["mean_us"], row["up"]["mean_us"])
        row["target_met"] = max(row["down_vs_up"], row["blackhole_vs_up"]) <= TARGET_COLLECTOR
        s["collector"][kind] = row

    mem = raw["memory"]["runs"]
    s["memory"] = {}
    for config, m in mem.items():
        rounds = m["rounds"]
        entry = {
            "rss_start_mb": m["rss_start_mb"],
            "rounds": [(r["total_requests"], r["rss_mb"]) for r in rounds],
            "rss_after_first_round_mb": rounds[0]["rss_mb"],
            "first_round_requests": rounds[0]["requests"],
            "growth_after_first_round_mb": rounds[-1]["rss_mb"] - rounds[0]["rss_mb"],
            "us_per_request": median([r["us_per_request"] for r in rounds]),
        }
        if "downstreams" in rounds[-1]:
            entry["downstreams"] = rounds[-1]["downstreams"]
            entry["breakers"] = rounds[-1]["breakers"]
            entry["max_downstreams"] = m["max_downstreams"]
        s["memory"][config] = entry
    s["hosts"] = raw["memory"]["spec"]["hosts"]
    return s


def _f(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def conc_n(summary: dict[str, Any]) -> int:
    return summary["concurrent"]["concurrency"]


def raw_hosts(summary: dict[str, Any]) -> str:
    return f"{summary.get('hosts', 0):,}"


def render(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    s = summary
    ok = lambda met: "met" if met else "**missed**"  # noqa: E731
    lines = [
        f"Run {meta['date']}, tree {meta.get('commit', 'unknown')}"
        f"{' with uncommitted package changes' if meta.get('package_modified') else ''}; {meta['machine']}, "
        f"{meta['cpus']} CPUs, Python {meta['python']}, mode {meta['mode']}; medians of {meta['rounds']} alternating rounds.",
        "",
        "| Measurement | bare httpx | official distro | ours | ours / official | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for kind in ("sync", "async"):
        r = s[kind]
        lo, hi = r["ours_vs_official_rounds"]
        lines.append(
            f"| {kind} request, mean µs (p99) | {_f(r['bare']['mean_us'])} ({_f(r['bare']['p99_us'])}) "
            f"| {_f(r['official']['mean_us'])} ({_f(r['official']['p99_us'])}) "
            f"| {_f(r['ours']['mean_us'])} ({_f(r['ours']['p99_us'])}) "
            f"| {r['ours_vs_official']:.3f} [{lo:.2f}–{hi:.2f}] | ≤ {TARGET_HAPPY}: {ok(r['target_met'])} |"
        )
    c = s["concurrent"]
    lines.append(
        f"| {conc_n(s)} concurrent async, requests/s | {_f(c['bare']['requests_per_s'])} | {_f(c['official']['requests_per_s'])} "
        f"| {_f(c['ours']['requests_per_s'])} | {c['ours_vs_official_throughput']:.3f} (throughput) | report |"
    )
    lines += ["", "| Ours only | sync | async | target |", "|---|---:|---:|---|"]
    b = s["breaker"]
    lines.append(
        f"| call rejected by an open breaker, µs | {_f(b['sync']['rejected_us'])} | {_f(b['async']['rejected_us'])} | |"
    )
    lines.append(f"| real request (same process, interleaved), µs | {_f(b['sync']['real_us'])} | {_f(b['async']['real_us'])} | |")
    lines.append(
        f"| rejected / real | {b['sync']['ratio']:.3f} | {b['async']['ratio']:.3f} | well under 1: {ok(max(b['sync']['ratio'], b['async']['ratio']) < 0.5)} |"
    )
    col = s["collector"]
    for variant, label in (("up", "collector up (sink)"), ("down", "collector down (closed port)"), ("blackhole", "collector black-holed")):
        lines.append(
            f"| {label}, mean µs (p99) | {_f(col['sync'][variant]['mean_us'])} ({_f(col['sync'][variant]['p99_us'])}) "
            f"| {_f(col['async'][variant]['mean_us'])} ({_f(col['async'][variant]['p99_us'])}) | |"
        )
    for key, label in (("down_vs_up", "down / up"), ("blackhole_vs_up", "black-holed / up")):
        lines.append(
            f"| {label} | {col['sync'][key]:.3f} | {col['async'][key]:.3f} | ≤ {TARGET_COLLECTOR}: "
            f"{ok(max(col['sync'][key], col['async'][key]) <= TARGET_COLLECTOR)} |"
        )
    m = s["memory"]
    lines += [
        "",
        f"| Many hosts: round-robin over {raw_hosts(s)} hosts, no network | bare httpx | official distro | ours |",
        "|---|---:|---:|---:|",
        "| RSS at start, MB | " + " | ".join(_f(m[c]["rss_start_mb"], 1) for c in CONFIGS) + " |",
        "| RSS after first round (requests), MB | "
        + " | ".join(f"{_f(m[c]['rss_after_first_round_mb'], 1)} ({m[c]['first_round_requests']:,})" for c in CONFIGS)
        + " |",
        "| RSS after each round (cumulative requests), MB | "
        + " | ".join(", ".join(f"{_f(mb, 1)} ({n:,})" for n, mb in m[c]["rounds"]) for c in CONFIGS)
        + " |",
        "| growth first → last round, MB | "
        + " | ".join(_f(m[c]["growth_after_first_round_mb"], 1) if len(m[c]["rounds"]) > 1 else "–" for c in CONFIGS)
        + " |",
        "| µs per request (fake pool, every request a new host for the LRU) | " + " | ".join(_f(m[c]["us_per_request"]) for c in CONFIGS) + " |",
    ]
    o = m["ours"]
    lines.append(
        f"| per-downstream state kept (bound OTEL_INTEGRATION_MAX_DOWNSTREAMS={o['max_downstreams']}) | – | – "
        f"| {o['downstreams']} downstreams, {o['breakers']} breakers |"
    )
    checks = s["checks"]
    lines += [
        "",
        "Active in each configuration: "
        + "; ".join(
            f"{c}: upstream httpx instrumentation {'on' if checks[c]['upstream_httpx_instrumented'] else 'off'}, "
            f"our layer {'on' if checks[c]['otel_integration_layer'] else 'off'}, "
            f"traceparent {'sent' if checks[c].get('traceparent') else 'not sent'}, "
            f"X-Request-ID {'sent' if checks[c].get('x-request-id') else 'not sent'}"
            for c in CONFIGS
        ),
    ]
    return "\n".join(lines)


def run(quick: bool, only: list[str] | None = None, log=print) -> dict[str, Any]:
    bench = Bench(quick, log)
    bench.start_peers()
    raw: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        for name in ("happy", "breaker", "collector", "memory"):
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            raw[name] = getattr(bench, name)()
            log(f"[{name}] {time.perf_counter() - t0:.1f} s")
    finally:
        bench.stop_peers()
    meta = {
        **report.meta(None),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "mode": "quick" if quick else "full",
        "rounds": _size("rounds", quick),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return {"meta": meta, "raw": raw}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every scenario at tiny N (smoke test), < 30 s")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "last.json", help="where to write the JSON report")
    parser.add_argument("--setup", action="store_true", help="only build the venvs")
    parser.add_argument("--no-write", action="store_true", help="full run without updating docs/performance.md")
    args = parser.parse_args(argv)
    if args.setup:
        for name in ("official", "ours"):
            print(venvs.ensure(name))
        return 0
    result = run(args.quick)
    result["summary"] = summarize(result["raw"])
    result["markdown"] = render(result["summary"], result["meta"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print()
    print(result["markdown"])
    print(f"\n({result['meta']['seconds']} s; JSON report: {args.json})")
    if not args.quick and not args.no_write:
        versions = report.render_versions({"client": report.venv_versions("client")})
        report.save("wall", {"meta": result["meta"], "summary": result["summary"]})
        report.write_docs("benchmarks/run.py", "\n".join([result["markdown"], "", "Versions:", "", *versions]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
