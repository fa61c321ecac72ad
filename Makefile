# `make run` and `make test` each create the environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint docs setup benchmark clean

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

# The documentation site (mkdocs.yml) into site/; --strict fails on a missing page or anchor. The docs
# extra is installed into the environment the first time.
$(BIN)/mkdocs: | $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e ".[docs]"

docs: $(BIN)/mkdocs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

benchmark: $(STAMP)
	$(BIN)/python benchmarks/learner_throughput.py

clean:
	rm -rf $(VENV) results
