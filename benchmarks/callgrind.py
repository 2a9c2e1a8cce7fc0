"""Counting a command's executed instructions with valgrind's callgrind.

Callgrind prints ``==PID== Collected : N`` when a traced process image ends.
With ``--trace-children=yes`` a child process, and the new image after an
``exec``, are traced too; but the image that called ``exec`` is *not*
reported (its count is dropped when it is replaced). `opentelemetry-instrument`
is such an image: it execs the program. `counts` therefore returns one figure
per image that *ended*: for the launcher, that is the exec'd program only.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_COLLECTED = re.compile(r"^==(\d+)== Collected : (\d+)$", re.MULTILINE)

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


def counts(command: list[str], env: dict[str, str], cwd: Path, *, children: bool = True, timeout: float = 3600) -> Run:
    """Run ``command`` under callgrind; raise when it fails or reports nothing."""
    valgrind = [
        *_fixed_layout(),
        "valgrind",
        "--tool=callgrind",
        f"--trace-children={'yes' if children else 'no'}",
        "--callgrind-out-file=/dev/null",
    ]
    done = subprocess.run([*valgrind, *command], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    found = [int(n) for _, n in _COLLECTED.findall(done.stderr)]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"callgrind run of {command} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Run(found, done.stdout, done.stderr)
