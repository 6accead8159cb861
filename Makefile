# Each target sets up what it needs: a fresh clone needs only Python 3.11+ and `make`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test lint bench-aligners

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

## Run the whole test suite (what CI runs).
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## Fit time of every aligner kind against scipy (n = 100,000, 4096 -> 4096; several minutes).
bench-aligners: setup
	$(PY) benchmarks/bench_aligners.py
