"""The package is laid out as `docs/architecture.md` draws it, and its parts stay apart.

- the tree: every module the doc's Layout block lists exists, and every
  module of the package is listed there (a subpackage's ``__init__.py`` that is
  only a docstring is described by its directory's line);
- client side under ``_client/``, server side under ``_server/``: ``_client``
  never imports ``_server``; ``_server`` imports ``_client`` only where the doc
  says (``health.py`` reads the client's `ResilienceLayer`);
- developer tools under ``devtools/``, never loaded at start-up: no module
  outside it imports it at module level (only ``_cli.py``'s ``receive``
  command does, when run), and a real process that imports the package,
  configures it (``configure()`` or ``opentelemetry-instrument``) and runs the
  instrumentations (an httpx call, a Flask request) has not imported it;
- importing ``otel_integration`` imports nothing else (its names are lazy);
- the public API: ``__all__`` is what ``__init__.py`` resolves and what its
  typing block imports, and every name the docs tell users to use is in it;
- ``py.typed`` is in the wheel (built from this checkout).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import otel_integration
from tests.launched import launcher, service_env
from tests.peers import closed_port

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "otel_integration"
DOC = ROOT / "docs" / "architecture.md"

# The one place the server side reads the client side, as the doc's Layout section says.
SERVER_MODULES_READING_THE_CLIENT = {"otel_integration/_server/health.py"}


def doc_tree() -> set[str]:
    """The paths the Layout block of docs/architecture.md draws (directories without their slash)."""
    block = DOC.read_text().split("## Layout", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    parents: list[str] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        name = line.split()[0]
        # Entries sit at two spaces per level; description lines continue far to the right.
        if indent > 8 or not (name.endswith(("/", ".py")) or name == "py.typed"):
            continue
        parents = parents[: indent // 2]
        path = "".join(parents) + name
        if name.endswith("/"):
            parents.append(name)
        listed.add(path.rstrip("/"))
    return listed - {"otel_integration"}


def package_files() -> dict[str, Path]:
    files = {}
    for path in sorted(PACKAGE.rglob("*")):
        if "__pycache__" in path.parts or not (path.is_dir() or path.suffix == ".py" or path.name == "py.typed"):
            continue
        files[path.relative_to(ROOT).as_posix()] = path
    return files


def only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return len(body) <= 1 and all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def test_the_tree_is_the_one_the_architecture_doc_draws():
    listed = doc_tree()
    files = package_files()
    assert {"otel_integration/_client", "otel_integration/_server", "otel_integration/devtools"} <= listed
    assert sorted(listed - set(files)) == [], "listed in docs/architecture.md but not in the package"
    unlisted = [
        name for name, path in files.items()
        if name not in listed and not (path.name == "__init__.py" and only_a_docstring(path))
    ]
    assert unlisted == [], "in the package but not in the Layout of docs/architecture.md"


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in `path`, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((base, node.lineno, id(node) in top_level))
            found += [(f"{base}.{alias.name}", node.lineno, id(node) in top_level) for alias in node.names]
    return found


def modules_under(part: str) -> dict[str, Path]:
    return {name: path for name, path in package_files().items() if name.startswith(part) and path.suffix == ".py"}


def is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_client_side_never_imports_the_server_side():
    found = [
        f"{name}:{line} imports {module}"
        for name, path in modules_under("otel_integration/_client/").items()
        for module, line, _ in imports(path)
        if is_under(module, "otel_integration._server")
    ]
    assert found == []


def test_the_server_side_imports_the_client_side_only_where_the_doc_says():
    readers = {
        name
        for name, path in modules_under("otel_integration/_server/").items()
        for module, _, _ in imports(path)
        if is_under(module, "otel_integration._client")
    }
    assert readers == SERVER_MODULES_READING_THE_CLIENT
    text = DOC.read_text()
    assert "`_client` never imports `_server`" in text and "`health.py`" in text


def test_no_runtime_module_imports_the_developer_tools_at_module_level():
    found = []
    for name, path in package_files().items():
        if path.suffix != ".py" or name.startswith("otel_integration/devtools/"):
            continue
        for module, line, top in imports(path):
            if is_under(module, "otel_integration.devtools"):
                found.append((name, top))
    # The `otel-integration receive` command only, inside the function that runs it.
    assert set(found) <= {("otel_integration/_cli.py", False)}, found


def run(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# Runs the instrumentations once (an httpx call through the layer, a Flask request through
# the server side), then prints what of the package the process has imported.
WORKLOAD = """
import json, sys
{configure}
import flask, httpx
app = flask.Flask("layout")
@app.get("/")
def index():
    return httpx.get(sys.argv[1]).headers.get("x-seen-request-id", "sent")
answer = app.test_client().get("/", headers={{"X-Request-ID": "layout-1"}})
print(json.dumps({{
    "modules": sorted(m for m in sys.modules if m.startswith("otel_integration")),
    "echoed": answer.headers.get("X-Request-ID"),
}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["configure", "launcher"])
def test_the_runtime_never_imports_the_developer_tools(how, fault_server):
    env = service_env(f"http://127.0.0.1:{closed_port()}", "layout")  # no collector: the export gate's case
    code = WORKLOAD.format(configure="import otel_integration; otel_integration.configure()" if how == "configure" else "")
    argv = [sys.executable, "-c", code, fault_server.url + "/ok"]
    seen = run([launcher(), *argv] if how == "launcher" else argv, env)
    modules = seen["modules"]
    assert [m for m in modules if is_under(m, "otel_integration.devtools")] == []  # type: ignore[union-attr]
    # The instrumentations did run: both instrumentors loaded, the request's ID echoed and sent on.
    assert {"otel_integration._client.instrumentor", "otel_integration._server.instrumentor"} <= set(modules)  # type: ignore[arg-type]
    assert seen["echoed"] == "layout-1"
    assert fault_server.requests_to("/ok")[-1].headers.get("x-request-id") == "layout-1"


def test_importing_the_package_imports_nothing_else():
    code = (
        "import json, sys; before = set(sys.modules); import otel_integration; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    new = json.loads(done.stdout)
    assert "otel_integration" in new
    others = [m for m in new if m != "otel_integration" and m.split(".")[0] not in sys.stdlib_module_names]
    assert others == []


def test_the_public_api_is_all_and_only_all():
    names = set(otel_integration.__all__)
    assert list(otel_integration.__all__) == sorted(names)
    for name in names:
        value = getattr(otel_integration, name)
        assert value.__module__.startswith("otel_integration"), (name, value.__module__)
    assert names <= set(dir(otel_integration))
    with pytest.raises(AttributeError):
        otel_integration.not_a_public_name  # noqa: B018
    # What type checkers see (the TYPE_CHECKING block) is the same set of names.
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING"]
    typed = {alias.asname or alias.name for node in block.body for alias in node.names}  # type: ignore[attr-defined]
    assert typed == names


def test_every_name_the_docs_tell_users_to_import_is_public():
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.py"))]
    used: set[str] = set()
    for path in texts:
        text = path.read_text()
        used |= set(re.findall(r"\botel_integration\.([A-Za-z]\w*)\(", text))  # called: otel_integration.configure()
        for group in re.findall(r"from otel_integration import (\([^)]*\)|[^\n#]+)", text):
            names = group.strip("()").replace("\n", ",").split(",")
            used |= {name.split(" as ")[0].strip() for name in names if name.strip()}
    assert {"configure", "instrument_client", "RequestIdMiddleware"} <= used, "the patterns above are broken"
    assert sorted(used - set(otel_integration.__all__)) == []


@pytest.mark.slow
def test_the_wheel_ships_py_typed_and_every_part(tmp_path):
    # Built from a copy: setuptools leaves build/ in the tree it builds.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache",
    ))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("otel_integration-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    assert "otel_integration/py.typed" in shipped
    expected = {name for name, path in package_files().items() if path.is_file()}
    assert sorted(expected - shipped) == []
