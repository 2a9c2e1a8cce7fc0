# The two set-up commands of the README. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test demo bench check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest

demo: $(VENV)/.installed
	$(PY) examples/pipeline/demo.py

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

check: $(VENV)/.installed
	$(VENV)/bin/otel-integration check

clean:
	rm -rf $(VENV) .pytest_cache
