"""The per-configuration virtual environments, built once and cached.

``benchmarks/.venvs/official``: opentelemetry-distro + the OTLP exporters +
the upstream httpx instrumentation + httpx (configuration 2).
``benchmarks/.venvs/ours``: this repository installed editable with its
declared dependencies only, no dev extras (configurations 1 and 3). A dev
environment is not used on purpose: it holds fastapi, flask, pytest, ...,
which the launcher would import at start-up through their instrumentations.

Both use the interpreter running the benchmark and the same pinned versions
(`constraints.txt`), so they differ only by the distro. A venv is rebuilt when
its recipe (this list, the constraints, pyproject.toml) changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENVS = HERE / ".venvs"
CONSTRAINTS = HERE / "constraints.txt"

RECIPES: dict[str, list[str]] = {
    "official": [
        "opentelemetry-distro==0.66b1",
        "opentelemetry-exporter-otlp~=1.45.0",
        "opentelemetry-instrumentation-httpx==0.66b1",
        "httpx",
    ],
    "ours": ["-e", str(REPO)],
}


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def _fingerprint(name: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([sys.version, RECIPES[name]]).encode())
    h.update(CONSTRAINTS.read_bytes())
    if name == "ours":
        h.update(_install_relevant(REPO / "pyproject.toml"))
    return h.hexdigest()


def _install_relevant(pyproject: Path) -> bytes:
    """The parts of pyproject.toml an editable install depends on (code edits need no reinstall)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: any change rebuilds
        return pyproject.read_bytes()
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    keys = ("name", "dependencies", "entry-points", "scripts")
    return json.dumps({k: project.get(k) for k in keys}, sort_keys=True).encode()


def ensure(name: str, log=print) -> Path:
    """The venv ``name`` (built if missing or stale); returns its directory."""
    venv = VENVS / name
    stamp = venv / ".bench-fingerprint"
    fingerprint = _fingerprint(name)
    if stamp.exists() and stamp.read_text() == fingerprint and _bin(venv, "opentelemetry-instrument").exists():
        return venv
    log(f"[setup] building {venv} (one time; needs PyPI) ...")
    VENVS.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(_bin(venv, "python")), "-m", "pip", "--disable-pip-version-check", "-q"]
    done = subprocess.run(
        [*pip, "install", "-c", str(CONSTRAINTS), *RECIPES[name]], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"building {venv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    stamp.write_text(fingerprint)
    return venv


def python(venv: Path) -> str:
    return str(_bin(venv, "python"))


def launcher(venv: Path) -> str:
    return str(_bin(venv, "opentelemetry-instrument"))


if __name__ == "__main__":
    for n in RECIPES:
        print(ensure(n))
