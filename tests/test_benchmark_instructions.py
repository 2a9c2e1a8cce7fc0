"""The instruction benchmarks' moving parts, fast: no counting of a real configuration.

* every client-side configuration of benchmarks/instructions.py does what it
  claims (its --check-only mode: our layer on or off, headers sent, attempts
  per call, spans), in the benchmark's client venvs, without valgrind;
* callgrind counting (benchmarks/callgrind.py) on tiny programs: a count per
  process image that ends, none for an image replaced by exec (what
  startup.py relies on); the counts between checkpoints of one process (what
  instructions.py relies on). Skipped without valgrind on a laptop, fails in CI.

No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.peers import require_binary

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def client_venvs() -> None:
    """The benchmark's client-only venvs (shared with test_benchmark_smoke; built once, needs PyPI)."""
    setup = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--setup"], capture_output=True, text=True, timeout=900)
    if setup.returncode != 0:
        message = f"could not build the benchmark venvs:\n{setup.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.slow
def test_client_configurations_are_what_they_claim(client_venvs: None) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "instructions.py"), "--check-only", "--only", "client,rejected,retry"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    facts = json.loads(done.stdout[done.stdout.index("\n{") + 1 :] if not done.stdout.startswith("{") else done.stdout)
    assert set(facts) == {
        "client/bare", "client/official", "client/ours", "client/ours-no-speedups", "client/ours-no-layer",
        "rejected/ours", "retry/official-one-call", "retry/official-by-hand", "retry/ours",
    }
    # The script already stops when a configuration differs from its expectations;
    # these spell out the ones the comparisons rest on.
    assert not facts["client/bare"]["sdk"] and facts["client/bare"]["spans_per_unit"] == {}
    assert facts["client/official"]["sent_traceparent"] and not facts["client/official"]["sent_x_request_id"]
    assert facts["client/ours"]["otel_integration_layer"] and facts["client/ours"]["sent_x_request_id"]
    assert not facts["client/ours-no-layer"]["otel_integration_layer"]
    assert facts["client/ours"]["upstream_speedups"] and not facts["client/official"]["upstream_speedups"]
    assert not facts["client/ours-no-speedups"]["upstream_speedups"] and facts["client/ours-no-speedups"]["otel_integration_layer"]
    assert facts["rejected/ours"]["attempts_per_unit"] == 0  # rejected without I/O
    assert facts["retry/ours"]["attempts_per_unit"] == 2 and facts["retry/ours"]["max_resend_count"] == 1
    assert facts["retry/official-one-call"]["attempts_per_unit"] == 1
    assert facts["retry/official-by-hand"]["attempts_per_unit"] == 2


def test_callgrind_counts_each_image_that_ends() -> None:
    require_binary("valgrind", "apt-get install valgrind")
    callgrind = _load("callgrind")
    env, cwd = callgrind.clean_env(), Path(__file__).parent
    python = [sys.executable, "-S", "-c"]  # -S: no site, a small and quick program
    empty = callgrind.counts([*python, "pass"], env, cwd).counts
    loop = callgrind.counts([*python, "for _ in range(100_000): pass"], env, cwd).counts
    assert len(empty) == len(loop) == 1
    assert loop[0] > empty[0] + 100_000  # a loop iteration is more than one instruction
    # An image replaced by exec reports nothing: only the exec'd program is counted.
    execs = f"import os, sys; os.execv(sys.executable, [sys.executable, '-S', '-c', {'pass'!r}])"
    replaced = callgrind.counts([*python, execs], env, cwd, children=True).counts
    assert len(replaced) == 1
    assert abs(replaced[0] - empty[0]) / empty[0] < 0.05


def test_a_failing_program_is_an_error() -> None:
    require_binary("valgrind", "apt-get install valgrind")
    callgrind = _load("callgrind")
    with pytest.raises(RuntimeError, match="failed"):
        callgrind.counts([sys.executable, "-S", "-c", "raise SystemExit(3)"], callgrind.clean_env(), Path(__file__).parent)


def test_segments_count_between_the_checkpoints_of_one_process() -> None:
    require_binary("valgrind", "apt-get install valgrind")
    callgrind = _load("callgrind")
    env, cwd = callgrind.clean_env(), Path(__file__).parent
    program = (
        f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r})\n"
        "from callgrind import checkpoint\n"  # the benchmarks' own
        "for _ in range(50_000): pass\n"  # before the first checkpoint: in no segment
        "checkpoint()\n"
        "for n in (1_000, 10_000, 10_000, 0):\n"
        "    for _ in range(n): pass\n"
        "    checkpoint()\n"
        "for _ in range(50_000): pass\n"  # after the last: in none either
    )
    # Run through an exec, as the launcher runs the counted program.
    execs = f"import os, sys; os.execv(sys.executable, [sys.executable, '-S', '-c', {program!r}])"
    parts = callgrind.segments([sys.executable, "-S", "-c", execs], env, cwd, checkpoints=5)
    assert len(parts) == 4
    one_k, ten_k, ten_k_again, nothing = parts
    assert ten_k > 10_000 * 5 and abs(ten_k - ten_k_again) / ten_k < 0.001
    assert 9 < ten_k / one_k < 11
    assert nothing < one_k / 10  # the loop's set-up and one call only
    # The loops outside the checkpoints (50,000 iterations each) are in none of the parts.
    assert sum(parts) < ten_k * 2.5


def test_segments_refuse_a_program_without_its_checkpoints() -> None:
    require_binary("valgrind", "apt-get install valgrind")
    callgrind = _load("callgrind")
    with pytest.raises(RuntimeError, match="expected 3 checkpoints, callgrind saw 1"):
        callgrind.segments(
            [sys.executable, "-S", "-c", "import os; os.sched_get_priority_min(os.SCHED_OTHER)"],
            callgrind.clean_env(), Path(__file__).parent, checkpoints=3,
        )
