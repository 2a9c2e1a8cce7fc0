#!/usr/bin/env bash
# Install the built wheel as a user would, and run the quickstart with it:
#   1. with the pip the machine's Python ships (no upgrade), base package and every extra;
#   2. with the newest pip.
# Each in a fresh venv outside the checkout. Run by .ci/run and `make install-check`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The wheel is built by the pip of a fresh venv: the system Python may have no pip of its own.
$PYTHON -m venv "$work/build"
echo "== building the wheel with $("$work/build/bin/python" -m pip --version | cut -d' ' -f1-2)"
"$work/build/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/otel_integration-*.whl)

check() {  # check <name> <upgrade pip: yes|no> <requirement>
    local venv="$work/$1"
    $PYTHON -m venv "$venv"
    if [ "$2" = yes ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    fi
    echo "== $1: $("$venv/bin/python" -m pip --version | cut -d' ' -f1-2), pip install $(basename "$3")"
    local started=$SECONDS
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$3"
    echo "   resolved and installed in $((SECONDS - started)) s"
    "$venv/bin/python" -m pip check
    (cd "$work" && "$venv/bin/python" "$OLDPWD/scripts/quickstart_check.py")
}

check default-pip no "$wheel"
check default-pip-all-extras no "$wheel[all]"
check newest-pip yes "$wheel[all]"

# uv resolves it too (the development lock is made with it: make lock).
"$work/newest-pip/bin/python" -m pip install --quiet --disable-pip-version-check uv
$PYTHON -m venv --without-pip "$work/uv"
echo "== uv: $("$work/newest-pip/bin/uv" --version), uv pip install $(basename "$wheel")[all]"
"$work/newest-pip/bin/uv" pip install --quiet --python "$work/uv/bin/python" "$wheel[all]"
(cd "$work" && "$work/uv/bin/python" "$OLDPWD/scripts/quickstart_check.py")
echo "install check passed"
