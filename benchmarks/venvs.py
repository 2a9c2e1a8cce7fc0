"""The benchmark's virtual environments, built once and cached under ``benchmarks/.venvs/``.

Three pairs, one venv per distro, built with the interpreter running the
benchmark and the versions pinned in `constraints.txt`, so that the two venvs
of a pair differ only by the distro (and the distro's own dependencies):

* ``official`` / ``ours``: a pure httpx client. No server framework is
  installed on purpose: ``opentelemetry-instrument`` imports every installed
  instrumentation at start-up, and an instrumentation imports its framework,
  so installed frameworks would add their import cost to a client's start-up.
* ``official-fastapi`` / ``ours-fastapi``: a FastAPI service (FastAPI,
  uvicorn, the ASGI and FastAPI instrumentations): its start-up.
* ``official-server`` / ``ours-server``: Starlette, FastAPI and Flask with
  their instrumentations: the per-incoming-request benchmarks.

Ours is installed the way a user installs it: from a wheel built from a copy
of this tree (an editable install would add setuptools' import hook to every
start-up and write build files into the checkout). A venv is rebuilt when its
recipe or the constraints change; when only the package's code changed, the
new wheel replaces the old one (``--no-deps``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENVS = HERE / ".venvs"
CONSTRAINTS = HERE / "constraints.txt"
PACKAGE = "otel_integration"

_CLIENT = ("httpx",)
_OFFICIAL = ("opentelemetry-distro==0.66b1", "opentelemetry-exporter-otlp==1.45.1", "opentelemetry-instrumentation-httpx==0.66b1")
_ASGI = ("opentelemetry-instrumentation-asgi==0.66b1",)
_FASTAPI_APP = ("fastapi", "uvicorn")
_SERVER_APPS = ("starlette", "fastapi", "flask", "uvicorn")
_SERVER_INSTRUMENTATIONS = (
    *_ASGI,
    "opentelemetry-instrumentation-starlette==0.66b1",
    "opentelemetry-instrumentation-fastapi==0.66b1",
    "opentelemetry-instrumentation-wsgi==0.66b1",
    "opentelemetry-instrumentation-flask==0.66b1",
)


@dataclass(frozen=True)
class Recipe:
    distro: str  # "official" or "ours"
    profile: str  # "client", "fastapi" or "server"
    requirements: tuple[str, ...]  # for ours: without the wheel itself
    extras: str = ""  # ours: the extras of the wheel, e.g. "[fastapi]"


RECIPES: dict[str, Recipe] = {
    "official": Recipe("official", "client", (*_OFFICIAL, *_CLIENT)),
    "ours": Recipe("ours", "client", _CLIENT),
    "official-fastapi": Recipe(
        "official", "fastapi", (*_OFFICIAL, *_ASGI, "opentelemetry-instrumentation-fastapi==0.66b1", *_CLIENT, *_FASTAPI_APP)
    ),
    "ours-fastapi": Recipe("ours", "fastapi", (*_CLIENT, *_FASTAPI_APP), "[fastapi]"),
    "official-server": Recipe("official", "server", (*_OFFICIAL, *_SERVER_INSTRUMENTATIONS, *_CLIENT, *_SERVER_APPS)),
    "ours-server": Recipe("ours", "server", (*_CLIENT, *_SERVER_APPS), "[starlette,fastapi,flask]"),
}

# Installed by `python -m venv` itself, not by a recipe.
_BOOTSTRAP = {"pip", "setuptools"}


def pair(profile: str) -> tuple[str, str]:
    """The (official, ours) venv names of a profile."""
    return ("official", "ours") if profile == "client" else (f"official-{profile}", f"ours-{profile}")


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def python(venv: Path) -> str:
    return str(_bin(venv, "python"))


def launcher(venv: Path) -> str:
    return str(_bin(venv, "opentelemetry-instrument"))


# --- fingerprints: when to rebuild -----------------------------------------------------------


def _package_files() -> list[Path]:
    """What the wheel is made of (README.md only as metadata: not fingerprinted, so
    regenerating its performance section does not reinstall anything)."""
    return [REPO / "pyproject.toml", *sorted((REPO / PACKAGE).rglob("*.py"))]


def code_fingerprint() -> str:
    h = hashlib.sha256()
    for path in _package_files():
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _recipe_fingerprint(name: str) -> str:
    h = hashlib.sha256()
    recipe = RECIPES[name]
    h.update(json.dumps([sys.version, recipe.requirements, recipe.extras]).encode())
    h.update(CONSTRAINTS.read_bytes())
    if recipe.distro == "ours":
        h.update((REPO / "pyproject.toml").read_bytes())  # our dependencies
    return h.hexdigest()


# --- building ------------------------------------------------------------------------------


def _pip(venv: Path) -> list[str]:
    return [python(venv), "-m", "pip", "--disable-pip-version-check", "-q"]


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def build_wheel(builder: Path, fingerprint: str) -> Path:
    """The wheel of this tree, built from a copy (nothing is written into the checkout)."""
    wheels = VENVS / "wheels" / fingerprint[:16]
    found = sorted(wheels.glob("otel_integration-*.whl"))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        shutil.copy2(REPO / "pyproject.toml", source)
        shutil.copy2(REPO / "README.md", source)
        shutil.copytree(REPO / PACKAGE, source / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
        _run([*_pip(builder), "wheel", "--no-deps", "-w", str(wheels), str(source)], "building the wheel")
    return sorted(wheels.glob("otel_integration-*.whl"))[0]


def ensure(name: str, log: Callable[[str], None] = print) -> Path:
    """The venv ``name``, built or refreshed if missing or stale; returns its directory."""
    recipe = RECIPES[name]
    venv = VENVS / name
    stamp = venv / ".bench-fingerprint"
    wanted = {"recipe": _recipe_fingerprint(name)}
    if recipe.distro == "ours":
        wanted["code"] = code_fingerprint()
    try:
        current = json.loads(stamp.read_text()) if stamp.exists() else {}
    except ValueError:  # a stamp of an older format: rebuild
        current = {}
    if not isinstance(current, dict):
        current = {}
    if current == wanted and Path(launcher(venv)).exists():
        return venv
    fresh = current.get("recipe") != wanted["recipe"] or not Path(launcher(venv)).exists()
    if fresh:
        log(f"[setup] building {venv} (needs PyPI the first time) ...")
        VENVS.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", "--clear", str(venv)], f"creating {venv}")
    else:
        log(f"[setup] {venv}: the package changed, installing the new wheel ...")
    command = [*_pip(venv), "install", "-c", str(CONSTRAINTS)]
    if recipe.distro == "ours":
        wheel = build_wheel(venv, wanted["code"])
        command += ["--force-reinstall", "--no-deps", str(wheel)] if not fresh else [f"{wheel}{recipe.extras}"]
    if fresh:
        command += list(recipe.requirements)
    _run(command, f"installing into {venv}")
    stamp.write_text(json.dumps(wanted))
    return venv


def warm(venv: Path) -> None:
    """Compile every module the runs may import, so no measured run writes (or skips) a .pyc.

    The stdlib of the interpreter too, and the benchmark's own helper modules.
    Measured runs also set PYTHONDONTWRITEBYTECODE=1: whatever was missed is then
    compiled in every run alike instead of in whichever run came first.
    """
    paths = subprocess.run(
        [python(venv), "-c", "import sysconfig, json; print(json.dumps([sysconfig.get_path(k) for k in ('stdlib', 'purelib', 'platlib')]))"],
        capture_output=True, text=True, check=True,
    )
    directories = sorted(set(json.loads(paths.stdout)))
    for directory in directories:
        # Errors are tolerated: a few test files of third-party packages do not compile.
        subprocess.run([python(venv), "-m", "compileall", "-q", "-j", "0", directory], capture_output=True)
    subprocess.run([python(venv), "-m", "compileall", "-q", "-l", str(HERE)], capture_output=True, check=True)


def packages(venv: Path) -> dict[str, str]:
    """Installed distributions: normalised name -> version (pip and setuptools left out)."""
    code = (
        "import importlib.metadata as m, json, re;"
        "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version for d in m.distributions()}))"
    )
    done = subprocess.run([python(venv), "-c", code], capture_output=True, text=True, check=True)
    return {k: v for k, v in sorted(json.loads(done.stdout).items()) if k not in _BOOTSTRAP}


def compare(official: dict[str, str], ours: dict[str, str]) -> dict[str, object]:
    """What differs between the two venvs of a pair; shared packages must have equal versions."""
    shared = sorted(set(official) & set(ours))
    mismatched = {n: (official[n], ours[n]) for n in shared if official[n] != ours[n]}
    if mismatched:
        raise RuntimeError(f"the venvs of a pair disagree on versions: {mismatched} (see constraints.txt)")
    return {
        "shared": {n: official[n] for n in shared},
        "official_only": {n: v for n, v in official.items() if n not in ours},
        "ours_only": {n: v for n, v in ours.items() if n not in official},
    }


if __name__ == "__main__":
    for venv_name in RECIPES:
        print(ensure(venv_name))
