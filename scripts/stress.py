"""Run the test suite several times while CPU hogs keep the cores busy.

    python scripts/stress.py --runs 3 --hogs 2 [-- extra pytest args]

A test that only passes on an idle machine depends on scheduling (a window
that elapses before its assertion, a fixed sleep): this makes such tests fail
here rather than in CI. Exit status 0 only when every run passed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOG = "while True: pass"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy-looping processes beside the suite")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
    results: list[tuple[int, float]] = []
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            print(f"== run {run}/{args.runs} with {args.hogs} CPU hog(s)", flush=True)
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
                cwd=REPO,
                # As in a terminal, even when this script was started in the background
                # (which makes the shell ignore SIGINT for it and everything it starts).
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
            results.append((done.returncode, time.monotonic() - started))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    for run, (code, seconds) in enumerate(results, 1):
        print(f"run {run}: {'passed' if code == 0 else f'FAILED (pytest exit {code})'} in {seconds:.0f} s")
    return 0 if all(code == 0 for code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
