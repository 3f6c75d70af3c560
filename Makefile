# The quick start: `make run` starts a local 3-node cluster, `make test` runs the tests.
# Both create their own virtual environment (.venv) on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
NODES  ?= 3

.PHONY: run test lint check perf clean

$(BIN)/hubbub: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

run: $(BIN)/hubbub
	$(BIN)/hubbub cluster --nodes $(NODES)

test: $(BIN)/hubbub
	$(BIN)/python -m pytest -p no:cacheprovider -ra

lint: $(BIN)/hubbub
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test

perf: $(BIN)/hubbub
	$(BIN)/python benchmarks/compare.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
