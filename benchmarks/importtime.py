"""Reading ``python -X importtime`` output, and what one launcher imports that another does not.

Each line is ``import time: <self µs> | <cumulative µs> | <indent><module>``,
printed when the module's import *finishes*: a module's children come before
it, two spaces deeper. So the importer of a line is the next line below it
that is one level shallower.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)\s*$")


@dataclass(frozen=True)
class Import:
    module: str
    self_us: int
    cumulative_us: int
    parent: str | None  # the module whose import caused this one (None: top level)
    depth: int = 0


def parse(stderr: str) -> list[Import]:
    """The imports of one run, in output order."""
    rows: list[tuple[str, int, int, int]] = []
    for line in stderr.splitlines():
        found = _LINE.match(line)
        if found:
            self_us, cumulative_us, indent, module = found.groups()
            rows.append((module, int(self_us), int(cumulative_us), len(indent) // 2))
    imports: list[Import] = []
    latest_at_depth: dict[int, str] = {}  # walking backwards: the importer is the latest seen one level up
    for module, self_us, cumulative_us, depth in reversed(rows):
        parent = latest_at_depth.get(depth - 1)
        latest_at_depth[depth] = module
        for deeper in [d for d in latest_at_depth if d > depth]:
            del latest_at_depth[deeper]
        imports.append(Import(module, self_us, cumulative_us, parent, depth))
    imports.reverse()
    return imports


def _extra_self(run: list[Import], extra: set[str]) -> dict[str, int]:
    """Per module of ``extra``: self time of it and of every ``extra`` module below it.

    A module's subtree is the run of deeper lines just before it (children print first).
    """
    totals: dict[str, int] = {}
    pending: list[tuple[int, int]] = []  # (depth, extra self time of that finished subtree)
    for i in run:
        total = i.self_us if i.module in extra else 0
        while pending and pending[-1][0] > i.depth:
            total += pending.pop()[1]
        pending.append((i.depth, total))
        if i.module in extra:
            totals[i.module] = total
    return totals


def _outermost(run: list[Import]) -> dict[str, Import]:
    """One line per module: the outermost (largest cumulative) of its lines.

    ``from pkg.sub import x`` prints ``pkg.sub`` twice when ``pkg/__init__`` imports
    ``pkg.sub`` itself: once inside ``pkg``, once around ``pkg`` (the outer one holds it all).
    """
    chosen: dict[str, Import] = {}
    for i in run:
        if i.module not in chosen or i.cumulative_us > chosen[i.module].cumulative_us:
            chosen[i.module] = i
    return chosen


def only_in(runs: list[list[Import]], baseline_runs: list[list[Import]]) -> dict[str, object]:
    """Modules imported in every one of ``runs`` and in none of ``baseline_runs``.

    ``roots`` are the top of each such subtree (their importer is imported by
    both). Per root, medians over the runs: ``cumulative_us`` as Python reports
    it, which also holds the first import of modules the baseline imports too
    (e.g. httpx), and ``extra_us``, the self time of the modules in its subtree
    that only ``runs`` import: what importing it lazily would save.
    """
    seen_in_baseline = {i.module for run in baseline_runs for i in run}
    common = set.intersection(*({i.module for i in run} for run in runs))
    extra = common - seen_in_baseline
    cumulative: dict[str, list[int]] = {m: [] for m in extra}
    own: dict[str, list[int]] = {m: [] for m in extra}
    extra_self: dict[str, list[int]] = {m: [] for m in extra}
    parents: dict[str, str | None] = {}
    for run in runs:
        subtree_extra = _extra_self(run, extra)
        for i in _outermost(run).values():
            if i.module in extra:
                cumulative[i.module].append(i.cumulative_us)
                own[i.module].append(i.self_us)
                extra_self[i.module].append(subtree_extra.get(i.module, i.self_us))
                parents.setdefault(i.module, i.parent)
    rows = [
        {
            "module": m,
            "cumulative_us": statistics.median(cumulative[m]),
            "self_us": statistics.median(own[m]),
            "extra_us": statistics.median(extra_self[m]),
            "parent": parents[m],
        }
        for m in extra
    ]
    rows.sort(key=lambda r: (-float(r["cumulative_us"]), str(r["module"])))  # type: ignore[arg-type]
    roots = [r for r in rows if r["parent"] not in extra]
    return {
        "roots": roots,
        "roots_extra_us": sum(float(r["extra_us"]) for r in roots),  # type: ignore[arg-type]
        "modules": len(rows),
        "all": rows,
    }
