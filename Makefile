# `make run` and `make test` each create the environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup benchmark clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/pip install -q -e examples/benchbase-star
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/bench run

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff (lint and format) and the import contracts between benchbase's rooms (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

benchmark: $(STAMP)
	$(BIN)/python benchmarks/learner_throughput.py

clean:
	rm -rf $(VENV) results
