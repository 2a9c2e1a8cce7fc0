"""The pure parts of the instruction and start-up benchmarks, without valgrind.

The linearity check (a benchmark must refuse to report counts that do not
grow linearly), the generated-block writer (the docs' figures come from a
run, and only the marked block changes) and the -X importtime reader.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    """A benchmarks/ module by path (benchmarks/ is not a package, and stays off sys.path)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


linearity = _load("linearity")
generated = _load("generated")
importtime = _load("importtime")


# --- linearity ---------------------------------------------------------------------------------


def test_linear_counts_give_the_slope() -> None:
    fit = linearity.checked_fit({100: 1_000_000 + 100 * 1500, 600: 1_000_000 + 600 * 1500, 1100: 1_000_000 + 1100 * 1500})
    assert fit.per_unit == 1500
    assert fit.slopes == (1500, 1500)
    assert fit.disagreement == 0


def test_sizes_may_come_in_any_order() -> None:
    assert linearity.fit({1100: 12_100, 100: 1100, 600: 6600}).per_unit == 11


def test_a_cold_run_is_refused() -> None:
    # 170 M instructions of .pyc compilation landing in the middle run only.
    counts = {100: 1_000_000_000 + 100 * 1_500_000, 600: 1_170_000_000 + 600 * 1_500_000, 1100: 1_000_000_000 + 1100 * 1_500_000}
    with pytest.raises(linearity.NonLinearError, match="not linear"):
        linearity.checked_fit(counts, what="client/ours")


def test_a_growing_cost_is_refused() -> None:
    # Each unit costs a little more than the one before (a cache growing): slope 2 > slope 1.
    counts = {n: 1_000_000 + 1000 * n + n * n for n in (100, 600, 1100)}
    with pytest.raises(linearity.NonLinearError):
        linearity.checked_fit(counts)


def test_the_tolerance_is_half_a_percent() -> None:
    def counts(second_slope: float) -> dict[int, int]:
        return {100: 100_000, 600: 100_000 + 500 * 1000, 1100: int(100_000 + 500 * 1000 + 500 * second_slope)}

    linearity.checked_fit(counts(1004.9))  # 0.49 % apart: reported
    with pytest.raises(linearity.NonLinearError):
        linearity.checked_fit(counts(1005.1))  # 0.51 % apart: refused


@pytest.mark.parametrize("counts", [{100: 1, 600: 2}, {100: 1, 600: 2, 1100: 3, 1600: 4}, {100: 5, 600: 5, 1100: 5}])
def test_bad_input_is_an_error(counts: dict[int, int]) -> None:
    with pytest.raises(ValueError):
        linearity.checked_fit(counts)


# --- generated blocks --------------------------------------------------------------------------

OWNER = "benchmarks/example.py"
DOC = f"""# Title

Prose before.

{generated.begin_marker(OWNER)}
old figures
{generated.END}

Prose after.
"""


def test_only_the_block_changes() -> None:
    new = generated.replace_block(DOC, OWNER, "| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert new == DOC.replace("old figures", "| a | b |\n|---|---|\n| 1 | 2 |")
    assert new.startswith("# Title\n\nProse before.\n\n") and new.endswith("\n\nProse after.\n")


def test_rewriting_is_idempotent() -> None:
    once = generated.replace_block(DOC, OWNER, "figures")
    assert generated.replace_block(once, OWNER, "figures") == once


def test_blocks_of_other_owners_are_left_alone() -> None:
    other = "benchmarks/other.py"
    doc = DOC + f"\n{generated.begin_marker(other)}\nkeep me\n{generated.END}\n"
    new = generated.replace_block(doc, OWNER, "figures")
    assert "keep me" in new and "old figures" not in new
    assert generated.replace_block(new, other, "mine").count("figures") == 1


@pytest.mark.parametrize(
    "doc",
    [
        "no markers at all\n",
        f"{generated.begin_marker(OWNER)}\nno end marker\n",
        f"{generated.begin_marker(OWNER)}\n{generated.END}\n{generated.begin_marker(OWNER)}\n{generated.END}\n",
    ],
)
def test_a_missing_or_doubled_block_is_an_error(doc: str) -> None:
    with pytest.raises(ValueError):
        generated.replace_block(doc, OWNER, "figures")


def test_write_block_touches_the_file_only_when_needed(tmp_path: Path) -> None:
    path = tmp_path / "doc.md"
    path.write_text(DOC)
    assert generated.write_block(path, OWNER, "figures") is True
    assert generated.write_block(path, OWNER, "figures") is False
    assert "figures" in path.read_text()


# --- -X importtime -----------------------------------------------------------------------------

# Children print before their importer, two spaces deeper.
RUN = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |   shared_child
import time:        50 |        150 | common
import time:        10 |         10 |       deep_extra
import time:        20 |         30 |     extra_child
import time:       500 |        500 |     httpx
import time:       200 |        730 |   extra_root
import time:        40 |        770 | sitecustomize
"""
BASELINE = """\
import time:       100 |        100 |   shared_child
import time:        50 |        150 | common
import time:       500 |        500 |   httpx
import time:        40 |        540 | sitecustomize
"""


def test_importers_are_read_from_the_indentation() -> None:
    parents = {i.module: i.parent for i in importtime.parse(RUN)}
    assert parents == {
        "shared_child": "common",
        "common": None,
        "deep_extra": "extra_child",
        "extra_child": "extra_root",
        "httpx": "extra_root",
        "extra_root": "sitecustomize",
        "sitecustomize": None,
    }


def test_only_in_lists_the_subtrees_the_baseline_lacks() -> None:
    diff = importtime.only_in([importtime.parse(RUN)], [importtime.parse(BASELINE)])
    assert [r["module"] for r in diff["roots"]] == ["extra_root"]
    root = diff["roots"][0]
    # Cumulative as Python reports it (httpx's first import included); "only ours" without httpx.
    assert (root["cumulative_us"], root["extra_us"]) == (730, 230)
    assert diff["roots_extra_us"] == 230
    assert {r["module"] for r in diff["all"]} == {"extra_root", "extra_child", "deep_extra"}


def test_a_package_importing_its_own_submodule_is_one_subtree() -> None:
    # `from pkg.config import x`, where pkg/__init__ imports pkg.config: pkg.config prints
    # twice, inside pkg and around it.
    run = """\
import time:        30 |         30 |       pkg.config
import time:        20 |         50 |     pkg
import time:         5 |         55 |   pkg.config
import time:        40 |         95 | sitecustomize
"""
    diff = importtime.only_in([importtime.parse(run)], [importtime.parse(BASELINE)])
    assert [(r["module"], r["parent"], r["cumulative_us"], r["extra_us"]) for r in diff["roots"]] == [
        ("pkg.config", "sitecustomize", 55, 55)
    ]
