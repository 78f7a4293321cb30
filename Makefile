# Two commands that work on a fresh machine; each installs what it needs into .venv.
#   make demo   the main job: the 1978 boarding-school influenza outbreak (SIR), compiled
#   make demo-gaussian  importance sampling on the Gaussian, next to the exact answer
#   make test   lint, type check, the core's size (tools/core_lines.py) and the test suite
#   make bench  the benchmark table (installs Pyro as the peer to compare with)
#   make bench-compare REV=fba5945  infcomp's figures for REV (default HEAD) and this tree
#   make bench-quality  quality at 10^3..10^5 simulations vs sbi NPE+IS and prior IS (installs sbi)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --constraint constraints.txt

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

.PHONY: install-run install-dev install-bench install-sbi demo demo-gaussian test test-all bench bench-compare bench-quality

install-run: $(BIN)/python
	$(PIP) -e '.[plot,arviz]'

install-dev: $(BIN)/python
	$(PIP) -e '.[dev,plot,bench]'

install-bench: $(BIN)/python
	$(PIP) -e '.[bench]'

install-sbi: $(BIN)/python
	$(PIP) -e '.[sbi]'

demo: install-run
	$(BIN)/python -m infcomp.sir_demo

demo-gaussian: install-run
	$(BIN)/python -m infcomp.demo

test: install-dev
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/mypy
	$(BIN)/python tools/core_lines.py
	$(BIN)/python -m pytest -q

test-all: install-dev
	$(BIN)/python -m pytest -q -m ''

bench: install-bench
	$(BIN)/python bench/all.py

bench-compare: install-bench
	$(BIN)/python bench/compare.py $(or $(REV),HEAD)

bench-quality: install-sbi
	$(BIN)/python bench/quality.py
