# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

## run: install, then run the scheduler on the bundled example backlog
run: $(VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" sh examples/demo/run.sh

## test: install with dev extras and run the test suite
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

## lint: ruff on everything, the architecture contracts, the type checker
lint: $(VENV)/.installed
	$(BIN)/ruff check scheduler wrapper tests bench scripts
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

bench: $(VENV)/.installed
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
