# The two set-up commands of the README (`make demo`, `make test`). Both create
# .venv on first use, with the pip that the machine's Python ships (no upgrade:
# what works here works for a user) and the versions locked in requirements/dev.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements/dev.txt

.PHONY: test test-stress typecheck demo bench bench-instructions bench-startup check lock install-check clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(LOCK) -e '.[dev]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest

# mypy --strict over the package (configured in pyproject.toml); CI runs it.
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# The whole suite three times while two CPU hogs keep both cores busy.
test-stress: $(VENV)/.installed
	$(PY) scripts/stress.py --runs 3 --hogs 2

demo: $(VENV)/.installed
	$(PY) examples/pipeline/demo.py

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

# Instructions per request with callgrind (valgrind); ~12 min on 2 cores (730 s measured).
bench-instructions: $(VENV)/.installed
	$(PY) benchmarks/instructions.py

# Start-up of a client-only and a FastAPI service; run it alone on the machine.
bench-startup: $(VENV)/.installed
	$(PY) benchmarks/startup.py

check: $(VENV)/.installed
	$(VENV)/bin/otel-integration check

# Refresh the development lock from pyproject.toml (needs uv, installed in a throwaway venv).
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check uv
	.venv-lock/bin/uv pip compile --quiet --universal --python-version 3.10 --extra dev \
		--no-emit-package otel-integration --custom-compile-command 'make lock' pyproject.toml -o $(LOCK)
	rm -rf .venv-lock

# Build the wheel and install it as a user would: default pip, then the newest pip.
install-check:
	scripts/install_check.sh

clean:
	rm -rf $(VENV) .pytest_cache build dist
