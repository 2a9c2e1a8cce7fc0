"""Counting a command's executed instructions with valgrind's callgrind.

Callgrind prints ``==PID== Collected : N`` when a traced process image ends.
With ``--trace-children=yes`` a child process, and the new image after an
``exec``, are traced too; but the image that called ``exec`` is *not*
reported (its count is dropped when it is replaced). `opentelemetry-instrument`
is such an image: it execs the program. `counts` therefore returns one figure
per image that *ended*: for the launcher, that is the exec'd program only.

`segments` counts parts of *one* process instead: the program calls
`checkpoint()` between the parts, and callgrind dumps (and zeroes) its
counters each time (``--dump-before`` the C function that call enters, which
nothing else calls). Parts of one process share its heap, so the run-to-run
variation of the allocators' work cancels out of a comparison between them.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_COLLECTED = re.compile(r"^==(\d+)== Collected : (\d+)$", re.MULTILINE)

# The libc function `checkpoint` enters; nothing else in CPython or the benchmarks calls it.
CHECKPOINT_FUNCTION = "sched_get_priority_min"
_TRIGGER = f"desc: Trigger: --dump-before={CHECKPOINT_FUNCTION}\n"
_PART = re.compile(r"^part: (\d+)$", re.MULTILINE)
_SUMMARY = re.compile(r"^summary: (\d+)$", re.MULTILINE)

# Variables that change what Python does (or how much it prints) and that a
# developer's shell may set: never inherited by a measured process.
_DROPPED_PREFIXES = ("OTEL_", "PYTHON")


@dataclass(frozen=True)
class Run:
    counts: list[int]  # one per traced image that ended, in the order they ended
    stdout: str
    stderr: str


def _fixed_layout() -> list[str]:
    """Run with address-space randomisation off, when ``setarch`` can (util-linux).

    Why: CPython's type attribute cache is indexed by the *addresses* of the
    attribute names, so with randomised addresses each run gets its own pattern of
    cache collisions, and its own per-unit cost: runs of the same program then
    differ by up to ~0.1 %, which is as much as a slope's whole tolerance.
    """
    setarch = shutil.which("setarch")
    return [setarch, platform.machine(), "--addr-no-randomize"] if setarch else []


def fixed_layout() -> bool:
    return bool(_fixed_layout())


def available() -> bool:
    return shutil.which("valgrind") is not None


def version() -> str:
    done = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    return done.stdout.strip()


def clean_env(**extra: str) -> dict[str, str]:
    """The inherited environment without OTEL_* / PYTHON* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}
    env.update(extra)
    return env


def checkpoint() -> None:
    """Mark a point of the counted program (see `segments`); costs the same every time."""
    os.sched_get_priority_min(os.SCHED_OTHER)


def _callgrind(
    command: list[str], env: dict[str, str], cwd: Path, timeout: float, *, children: bool, out_file: str, extra: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Run ``command`` under callgrind: the finished process and each ended image's count; raise when it fails."""
    valgrind = [
        *_fixed_layout(),
        "valgrind",
        "--tool=callgrind",
        f"--trace-children={'yes' if children else 'no'}",
        f"--callgrind-out-file={out_file}",
        *extra,
    ]
    done = subprocess.run([*valgrind, *command], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    found = [int(n) for _, n in _COLLECTED.findall(done.stderr)]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"callgrind run of {command} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done, found


def counts(command: list[str], env: dict[str, str], cwd: Path, *, children: bool = True, timeout: float = 3600) -> Run:
    """Run ``command`` under callgrind; raise when it fails or reports nothing."""
    done, found = _callgrind(command, env, cwd, timeout, children=children, out_file="/dev/null")
    return Run(found, done.stdout, done.stderr)


def segments(command: list[str], env: dict[str, str], cwd: Path, *, checkpoints: int, timeout: float = 3600) -> list[int]:
    """Instructions between consecutive `checkpoint()` calls of the program ``command`` runs.

    The program must make exactly ``checkpoints`` calls (in one process image,
    e.g. the one the launcher execs); the result has ``checkpoints - 1`` counts,
    the first from the first call to the second. What runs before the first call
    (start-up) and after the last (exit) is in none of them.
    """
    with tempfile.TemporaryDirectory(prefix="callgrind-") as out:
        _callgrind(
            command, env, cwd, timeout, children=True, out_file=f"{out}/callgrind.out.%p",
            extra=(f"--dump-before={CHECKPOINT_FUNCTION}",),
        )
        dumps = []  # (part, instructions) of each dump a checkpoint triggered
        for path in Path(out).iterdir():
            text = path.read_text()
            if _TRIGGER in text:
                part, summary = _PART.search(text), _SUMMARY.search(text)
                if part is None or summary is None:
                    raise RuntimeError(f"callgrind dump {path.name} has no part or summary line")
                dumps.append((int(part.group(1)), int(summary.group(1))))
    if len(dumps) != checkpoints:
        raise RuntimeError(f"{command}: expected {checkpoints} checkpoints, callgrind saw {len(dumps)}")
    # A dump holds what ran since the one before: the first, start-up up to the first checkpoint.
    return [instructions for _, instructions in sorted(dumps)[1:]]
