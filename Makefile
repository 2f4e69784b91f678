# The two quick-start commands: `make demo` (set up, then sync the sample shop on embedded defaults)
# and `make test` (set up, then run the test suite). Both create .venv on first use. `make test-fast` runs the
# tests that start no Ray and no emulator (under two minutes; see tests/conftest.py for the `integration` marker).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/ipai demo

test: setup
	$(BIN)/mypy
	$(BIN)/mypy mcp/server.py  # a plain folder (never the mcp package): checked as a file
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not integration"

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_bronze.py --rows-list 1000000,5000000 --warm-ray
	$(BIN)/python benchmarks/bench_http.py --warm-ray
	$(BIN)/python benchmarks/bench_sql.py --warm-ray
	$(BIN)/python benchmarks/bench_silver.py
