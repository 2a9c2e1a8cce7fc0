"""The package metadata: one OpenTelemetry release, a lock that matches it, every extra documented.

Whether the wheel really installs with the machine's pip is checked by
``scripts/install_check.sh`` (run by CI before the tests): it needs minutes and
the package registry, so it is not a unit test.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LOCK = REPO / "requirements" / "dev.txt"


def _requirements() -> list[Requirement]:
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        found += [Requirement(r) for r in extra if not r.startswith("otel-integration")]
    return found


def _exact(requirement: Requirement) -> Version:
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"{requirement} must be an exact pin (see the comment in pyproject.toml)"
    return Version(spec.version)


def test_the_opentelemetry_family_is_pinned_to_one_release() -> None:
    family = [r for r in _requirements() if r.name.startswith("opentelemetry-")]
    stable = {_exact(r) for r in family if _exact(r).major == 1}
    unstable = {_exact(r) for r in family if _exact(r).major == 0}
    assert len(stable) == 1 and len(unstable) == 1, family
    (api,), (contrib,) = stable, unstable
    # The family's numbering: API 1.x.y is released with instrumentations 0.(x+21)b(y).
    assert (contrib.minor, contrib.pre) == (api.minor + 21, ("b", api.micro)), (api, contrib)


def _locked() -> dict[str, set[Version]]:
    versions: dict[str, set[Version]] = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==([^ ;]+)", line)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            versions.setdefault(name, set()).add(Version(match.group(2)))
    return versions


def test_the_development_lock_satisfies_every_requirement() -> None:
    locked = _locked()
    for requirement in _requirements():
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in locked, f"{requirement} is not in {LOCK.name}: run make lock"
        for version in locked[name]:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{LOCK.name} has {name}=={version}, pyproject.toml asks {requirement}: run make lock"
            )


def test_every_extra_is_in_the_readme_table() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| Extra |"):]
    for extra in PROJECT["optional-dependencies"]:
        assert f"| `{extra}` |" in table, f"extra {extra!r} is not documented in the README"
