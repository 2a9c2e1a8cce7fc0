"""Per-call and per-incoming-request cost in CPU instructions: deterministic, unlike wall time.

    python benchmarks/instructions.py                 # everything, ~12 min on 2 cores (needs valgrind)
    python benchmarks/instructions.py --only client   # some tables only (nothing written to the docs)

Every configuration runs one program of `loops.py` (a scenario: a client
call on a fake httpcore pool, or an incoming request handed in-process to
a Starlette, FastAPI or Flask app) under valgrind's callgrind, which counts
executed instructions, once: with checkpoints after 100, 1,100 and 2,100
units by default (`callgrind.segments`). The per-unit figure is the slope
from the first to the last checkpoint, so start-up, warm-up and exit are not
in it; the two slopes in between must agree within 0.5 % (`linearity.py`),
else the script reports that configuration as refused and exits with 3.

Before anything is counted, every venv is warmed (`venvs.warm`: compileall of
the stdlib and site-packages) and each configuration runs once unmeasured
(`loops.py --check`), which also proves it is what it claims (spans, headers,
attempts: `Config.expect`). Counted runs set PYTHONDONTWRITEBYTECODE=1 and
only then run in parallel, so no run can write a .pyc another one reads.

Results: printed, kept in ``benchmarks/last_run/instructions.json`` and
written into the generated block of docs/performance.md (and the README's
summary), unless ``--only`` or ``--no-write`` is given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import callgrind  # noqa: E402
import linearity  # noqa: E402
import report  # noqa: E402
import venvs  # noqa: E402

OWNER = "benchmarks/instructions.py"
LOOPS = HERE / "loops.py"
# Checkpoints of one run, 1,000 units apart. Separate runs of each size differed too much: malloc
# and obmalloc work, set by the heap the start-up left (600 FastAPI requests under ours took
# 3,269.8 M to 3,277.3 M instructions over ten runs), was up to 1 % of a slope.
SIZES = (100, 1100, 2100)
CHECK_UNITS = 20

# Ours with its two instrumentors off: the distro's defaults, span processor and propagator alone.
NO_LAYER = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "otel_integration_httpx,otel_integration_server"}
# Retries without waiting; a budget that never runs dry (one retry per call, one
# deposit per call), so no retry depends on how fast the machine is.
RETRY_NOW = {
    "OTEL_INTEGRATION_RETRY_INITIAL_WAIT": "0",
    "OTEL_INTEGRATION_RETRY_JITTER": "0",
    "OTEL_INTEGRATION_RETRY_BUDGET_RATIO": "1",
}
# Ours leaving the upstream instrumentations' own code as it is (`upstream_speedups.py` not installed).
NO_SPEEDUPS = {"OTEL_INTEGRATION_UPSTREAM_SPEEDUPS": "false"}
# The first refused connection opens the breaker, for longer than any run.
BREAKER_OPENS = {"OTEL_INTEGRATION_BREAKER_THRESHOLD": "1", "OTEL_INTEGRATION_BREAKER_OPEN_SECONDS": "86400"}

FRAMEWORKS = {"starlette": "Starlette", "fastapi": "FastAPI", "flask": "Flask"}
ASGI_FRAMEWORKS = ("starlette", "fastapi")
# Ours with the upstream ASGI middleware's INTERNAL spans kept, as the official distro makes them.
ALL_ASGI_SPANS = {"OTEL_INTEGRATION_ASGI_INTERNAL_SPANS": "receive,send"}
# Targets of issue 15, ours / official per incoming request.
SERVER_TARGETS = {"starlette": report.TARGET_SERVER_ASGI, "fastapi": report.TARGET_SERVER_ASGI, "flask": report.TARGET_SERVER_WSGI}


@dataclass(frozen=True)
class Config:
    table: str  # client, rejected, retry, or a framework
    row: str  # bare, official, ours, ...
    venv: str
    scenario: str
    launcher: bool = True
    env: dict[str, str] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=dict)  # facts loops.py --check must report

    @property
    def key(self) -> str:
        return f"{self.table}/{self.row}"


_UPSTREAM_ONLY = {"upstream_httpx_instrumented": True, "otel_integration_layer": False}
_OURS = {"upstream_httpx_instrumented": True, "otel_integration_layer": True}
_BARE = {"sdk": False, "upstream_httpx_instrumented": False, "otel_integration_layer": False, "spans_per_unit": {}}


def _configs() -> list[Config]:
    one_client_span = {"spans_per_unit": {"CLIENT": 1.0}}
    configs = [
        Config("client", "bare", "official", "client", launcher=False, expect={**_BARE, "attempts_per_unit": 1.0}),
        Config("client", "official", "official", "client", expect={**_UPSTREAM_ONLY, **one_client_span, "sent_traceparent": True, "sent_x_request_id": False, "upstream_speedups": False}),
        Config("client", "ours", "ours", "client", expect={**_OURS, **one_client_span, "sent_traceparent": True, "sent_x_request_id": True, "upstream_speedups": True}),
        Config("client", "ours-no-speedups", "ours", "client", env=NO_SPEEDUPS, expect={**_OURS, **one_client_span, "sent_x_request_id": True, "upstream_speedups": False}),
        Config("client", "ours-no-layer", "ours", "client", env=NO_LAYER, expect={**_UPSTREAM_ONLY, **one_client_span}),
        Config("rejected", "ours", "ours", "rejected", env=BREAKER_OPENS, expect={**_OURS, **one_client_span, "attempts_per_unit": 0.0, "attempts_to_open": 1}),
        Config("retry", "official-one-call", "official", "unavailable", expect={**_UPSTREAM_ONLY, **one_client_span, "attempts_per_unit": 1.0}),
        Config("retry", "official-by-hand", "official", "flaky-by-hand", expect={**_UPSTREAM_ONLY, "spans_per_unit": {"CLIENT": 2.0}, "attempts_per_unit": 2.0}),
        Config("retry", "ours", "ours", "flaky", env=RETRY_NOW, expect={**_OURS, "spans_per_unit": {"CLIENT": 2.0}, "attempts_per_unit": 2.0, "max_resend_count": 1}),
    ]
    for fw in FRAMEWORKS:
        # The upstream ASGI middleware adds two INTERNAL `http send` spans per GET (the
        # response start and body; the handler reads no body, so no `http receive`);
        # ours drops them by default. `check` also asserts one SERVER span.
        server_only = {"SERVER": 1.0}
        with_sends = {"INTERNAL": 2.0, "SERVER": 1.0} if fw in ASGI_FRAMEWORKS else server_only
        served = {"status": 200}
        configs += [
            Config(fw, "bare", "official-server", fw, launcher=False, expect={**_BARE, "status": 200, "x_request_id_echoed": False}),
            Config(fw, "official", "official-server", fw, expect={**_UPSTREAM_ONLY, **served, "spans_per_unit": with_sends, "x_request_id_echoed": False}),
            Config(fw, "ours", "ours-server", fw, expect={**_OURS, **served, "spans_per_unit": server_only, "x_request_id_echoed": True}),
        ]
        if fw in ASGI_FRAMEWORKS:
            configs.append(Config(
                fw, "ours-all-spans", "ours-server", fw, env=ALL_ASGI_SPANS,
                expect={**_OURS, **served, "spans_per_unit": with_sends, "x_request_id_echoed": True},
            ))
    return configs


CONFIGS = _configs()
TABLES = ("client", "rejected", "retry", *FRAMEWORKS)


def environment(config: Config, measured: bool) -> dict[str, str]:
    env = callgrind.clean_env(
        OTEL_SERVICE_NAME="bench",
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SEMCONV_STABILITY_OPT_IN="http",  # our default, set for all: same upstream attributes
        PYTHONHASHSEED="0",
        **config.env,
    )
    if measured:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def command(config: Config, units: str, *extra: str) -> list[str]:
    venv = venvs.VENVS / config.venv
    program = [venvs.python(venv), str(LOOPS), config.scenario, units, *extra]
    # The launcher is a Python script: run by the venv's python so callgrind follows it, then its exec.
    return [venvs.python(venv), venvs.launcher(venv), *program] if config.launcher else program


def workdir() -> Path:
    """An empty working directory: '' on sys.path must not expose the checkout (its egg-info, modules)."""
    path = HERE / ".venvs" / "cwd"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check(config: Config) -> dict[str, Any]:
    """The unmeasured run: warms the configuration and reports what it really does."""
    done = subprocess.run(
        command(config, str(CHECK_UNITS), "--check"), env=environment(config, measured=False), cwd=workdir(),
        capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{config.key}: the check run failed:\n{done.stderr[-3000:]}")
    facts: dict[str, Any] = json.loads(lines[-1])
    wrong = {k: (facts.get(k), v) for k, v in config.expect.items() if v is not None and facts.get(k) != v}
    if config.table in FRAMEWORKS and config.launcher and facts["spans_per_unit"].get("SERVER") != 1.0:
        wrong["SERVER spans per request"] = (facts["spans_per_unit"].get("SERVER"), 1.0)
    if wrong:
        raise RuntimeError(f"{config.key} is not what it claims (found, expected): {wrong}")
    return facts


def count(config: Config, sizes: tuple[int, ...]) -> dict[int, int]:
    """Instructions from the first checkpoint (after the warm-up) to the one after each size's units."""
    parts = callgrind.segments(
        command(config, ",".join(map(str, sizes))), environment(config, measured=True), workdir(),
        checkpoints=len(sizes) + 1,
    )
    return dict(zip(sizes, itertools.accumulate(parts)))


# --- results ------------------------------------------------------------------------------------


def _ratio(per: dict[str, float], a: str, b: str) -> float | None:
    return per[a] / per[b] if a in per and b in per else None


def summarize(fits: dict[str, linearity.Fit]) -> dict[str, Any]:
    """Per-unit figures and the ratios the docs quote; a refused configuration has neither."""
    per = {key: f.per_unit for key, f in fits.items()}
    ratios = {
        "client": _ratio(per, "client/ours", "client/official"),
        "client_no_speedups": _ratio(per, "client/ours-no-speedups", "client/official"),
        "client_no_layer": _ratio(per, "client/ours-no-layer", "client/official"),
        "rejected_vs_happy": _ratio(per, "rejected/ours", "client/ours"),
        "retry_vs_one_call": _ratio(per, "retry/ours", "retry/official-one-call"),
        "retry_vs_by_hand": _ratio(per, "retry/ours", "retry/official-by-hand"),
        **{fw: _ratio(per, f"{fw}/ours", f"{fw}/official") for fw in FRAMEWORKS},
        **{f"{fw}_all_spans": _ratio(per, f"{fw}/ours-all-spans", f"{fw}/official") for fw in ASGI_FRAMEWORKS},
    }
    return {"per_unit": per, "ratios": {k: v for k, v in ratios.items() if v is not None}}


REFUSED = "**refused**"


def _n(x: float | None) -> str:
    return REFUSED if x is None else f"{x:,.0f}"


def _r(x: float | None, digits: int = 3) -> str:
    return REFUSED if x is None else f"{x:.{digits}f}"


def render(result: dict[str, Any]) -> str:
    per, r, m = result["per_unit"], result["ratios"], result["meta"]
    tables = {key.split("/")[0] for key in [*per, *result["refused"]]}
    sizes = "/".join(f"{s:,}" for s in m["sizes"])
    low, mid, high = m["sizes"]
    layout = "address randomisation off" if m.get("fixed_layout") else "address randomisation ON (no setarch)"
    out = [report.meta_line(m), f"One run per configuration, counted from the warm-up's end to checkpoints after {sizes} units; exporters off; start-up heap frozen out of the garbage collector (gc.freeze), which runs; {layout}.", ""]
    if result["refused"]:
        out += [
            f"Refused (the two slopes more than {linearity.TOLERANCE:.1%} apart, see Linearity): "
            + ", ".join(f"`{k}`" for k in result["refused"]) + ". Their figures and ratios are not reported.",
            "",
        ]
    if "client" in tables:
        official, bare = per.get("client/official"), per.get("client/bare")
        out += [
            "**Client, one successful call** (`GET`, 200 from the fake pool), instructions per call:",
            "",
            "| configuration | instructions | / official | / bare httpx |",
            "|---|---:|---:|---:|",
        ]
        for row, label in (
            ("bare", "bare httpx (no launcher)"),
            ("official", "official distro"),
            ("ours", "ours"),
            ("ours-no-speedups", "ours with `OTEL_INTEGRATION_UPSTREAM_SPEEDUPS=false` (upstream's header normalisation as it is)"),
            ("ours-no-layer", "ours, both our instrumentors disabled"),
        ):
            v = per.get(f"client/{row}")
            out.append(
                f"| {label} | {_n(v)} | {_r(v / official if v and official else None)} "
                f"| {_r(v / bare if v and bare else None, 2)} |"
            )
        out.append("")
    if tables & set(FRAMEWORKS):
        out += [
            "**Server, one incoming `GET /`** (trivial JSON handler, driven in-process), instructions per request:",
            "",
            "| framework | bare framework | official distro (SERVER + 2 `http send` spans on ASGI) | ours (SERVER span only) "
            "| ours / official | target | ours − official | ours with `OTEL_INTEGRATION_ASGI_INTERNAL_SPANS=receive,send` "
            "| that / official |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
        for fw, label in FRAMEWORKS.items():
            if fw in tables:
                b, o, u, a = (per.get(f"{fw}/{row}") for row in ("bare", "official", "ours", "ours-all-spans"))
                diff = u - o if u is not None and o is not None else None
                ratio = r.get(fw)
                target = "" if ratio is None else report.met(ratio, SERVER_TARGETS[fw])
                same = (_n(a), _r(r.get(f"{fw}_all_spans"))) if fw in ASGI_FRAMEWORKS else ("(no such spans)", "")
                out.append(f"| {label} | {_n(b)} | {_n(o)} | {_n(u)} | **{_r(ratio)}** | {target} | {_n(diff)} | {same[0]} | {same[1]} |")
        out.append("")
    if tables & {"retry", "rejected"}:
        out += ["**Failure paths**, instructions per call:", "", "| call | instructions | compared with | ratio |", "|---|---:|---|---:|"]
        if "rejected" in tables:
            out.append(
                f"| ours: rejected by an open breaker (no I/O; CLIENT span and metric recorded) | {_n(per.get('rejected/ours'))} "
                f"| one successful call, ours ({_n(per.get('client/ours'))}) | {_r(r.get('rejected_vs_happy'))} |"
            )
        if "retry" in tables:
            out.append(f"| ours: one call, 503 then 200 (2 attempts, no wait) | {_n(per.get('retry/ours'))} | | |")
            out.append(
                f"| official: one call, gets the 503 (1 attempt, no retry) | {_n(per.get('retry/official-one-call'))} "
                f"| ours / this | {_r(r.get('retry_vs_one_call'))} |"
            )
            out.append(
                f"| official: two calls by hand, 503 then 200 | {_n(per.get('retry/official-by-hand'))} "
                f"| ours / this | {_r(r.get('retry_vs_by_hand'))} |"
            )
        out.append("")
    out += [
        f"**Linearity** (slopes {low:,}→{mid:,} and {mid:,}→{high:,} units; refused above {linearity.TOLERANCE:.1%}):",
        "",
        "| configuration | slope 1 | slope 2 | apart | |",
        "|---|---:|---:|---:|---|",
    ]
    for key, f in sorted({**result["fits"], **result["refused"]}.items(), key=lambda kv: list(CONFIG_KEYS).index(kv[0])):
        verdict = REFUSED if key in result["refused"] else "ok"
        out.append(f"| {key} | {f['slopes'][0]:,.0f} | {f['slopes'][1]:,.0f} | {f['disagreement']:.3%} | {verdict} |")
    out += ["", "Versions (both venvs of a pair share every common package at the same version):", ""]
    out += report.render_versions(result["versions"])
    return "\n".join(out)


CONFIG_KEYS = {c.key: c for c in CONFIGS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated tables of {','.join(TABLES)} (implies --no-write)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="units at the three checkpoints of a run, e.g. 100,1100,2100")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="counted runs in parallel")
    parser.add_argument("--no-write", action="store_true", help="print only: keep docs and last_run/ as they are")
    parser.add_argument(
        "--check-only", action="store_true",
        help="no counting (no valgrind needed): run each configuration once and check it does what it claims",
    )
    args = parser.parse_args(argv)
    if not args.check_only and not callgrind.available():
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    sizes = tuple(sorted(int(s) for s in args.sizes.split(",")))
    only = [t for t in args.only.split(",") if t]
    if unknown := set(only) - set(TABLES):
        parser.error(f"unknown tables {sorted(unknown)}")
    configs = [c for c in CONFIGS if not only or c.table in only]
    if "rejected" in only and "client" not in only:
        configs += [c for c in CONFIGS if c.key == "client/ours"]  # its ratio's denominator
    started = time.monotonic()
    measured = report.meta(callgrind.version())  # the tree as the venvs get it, not as it is at the end

    for name in sorted({c.venv for c in configs}):
        venv = venvs.ensure(name)
        if not args.check_only:
            venvs.warm(venv)
    facts = {}
    for config in configs:  # one after the other: these may still write .pyc files
        facts[config.key] = check(config)
    if args.check_only:
        print(json.dumps(facts, indent=1, sort_keys=True))
        return 0
    print(f"[instructions] {len(configs)} configurations checked; counting them ...", flush=True)

    jobs = sorted(configs, key=lambda c: c.table not in FRAMEWORKS)  # the longest (server) first
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        totals = dict(zip((c.key for c in jobs), pool.map(lambda c: count(c, sizes), jobs)))
    fits: dict[str, linearity.Fit] = {}
    refused: dict[str, dict[str, Any]] = {}
    for config in configs:
        counts = totals[config.key]
        try:
            fits[config.key] = linearity.checked_fit(counts, what=config.key)
        except linearity.NonLinearError as error:
            refused[config.key] = {**linearity.fit(counts).as_dict(), "message": str(error)}
    if refused:
        # The raw counts, to look into (benchmarks/results/ is git-ignored).
        raw = {c.key: totals[c.key] for c in configs}
        dump = HERE / "results" / "instructions-refused.json"
        dump.parent.mkdir(exist_ok=True)
        dump.write_text(json.dumps(raw, indent=1))
        messages = [v["message"] for v in refused.values()]
        print("\n".join(["[instructions] refusing to report:", *messages, f"(raw counts: {dump})"]), file=sys.stderr)

    result: dict[str, Any] = {
        "meta": {
            **measured, "sizes": list(sizes), "seconds": round(time.monotonic() - started),
            "fixed_layout": callgrind.fixed_layout(),
        },
        **summarize(fits),
        "fits": {k: f.as_dict() for k, f in fits.items()},
        "refused": refused,
        "checks": facts,
        "labels": FRAMEWORKS,
        "versions": {p: report.venv_versions(p) for p in ("client", "server")
                     if any(c.venv in venvs.pair(p) for c in configs)},
    }
    markdown = render(result)
    print(markdown)
    if not only and not args.no_write:
        # Refused figures are written as refused, never as numbers.
        print(f"[instructions] results: {report.save('instructions', result)}; docs updated")
        report.write_docs(OWNER, markdown)
    return 3 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
