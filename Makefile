# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Test workers: one per CPU (pytest-xdist); the suite mostly waits on real processes.
TEST_WORKERS ?= auto

.PHONY: run demo-parallel test test-fast chaos lint bench clean coverage mutate

# Each step prints one line first, so a long install is never a silent wait.
step = @printf '== %s\n' $(1)

$(BIN)/python:
	$(call step,"creating $(VENV) with $(PYTHON)")
	@$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(call step,"installing tinyscheduler and its dependencies into $(VENV) (pip; 10-20 s the first time)")
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(call step,"installing the dev tools and the dashboard extra into $(VENV): pytest ruff mypy import-linter playwright starlette uvicorn jinja2 prometheus-client (pip; 20-40 s the first time)")
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,dashboard]'
	@touch $@

## run: install, then run the scheduler on the bundled example backlog
run: $(VENV)/.installed
	@PATH="$(abspath $(BIN)):$$PATH" sh examples/demo/run.sh

## test: install with dev extras and run the whole test suite (what CI runs), in parallel
test: $(VENV)/.installed-dev
	$(call step,"running the whole test suite (pytest -n $(TEST_WORKERS))")
	@$(BIN)/python -m pytest -q -p xdist -n $(TEST_WORKERS)

## test-fast: the unit tests only (no spawned schedulers, wrappers or agents), in seconds
test-fast: $(VENV)/.installed-dev
	@$(BIN)/python -m pytest -q -p xdist -n $(TEST_WORKERS) -m "not processes"

## demo-parallel: three agents edit one git repository at once, each in its own worktree
demo-parallel: $(VENV)/.installed
	@PATH="$(abspath $(BIN)):$$PATH" sh examples/parallel-repo/run.sh

## chaos: the long chaos runs (CHAOS_KILLS kill events per source, default 500, over the
## local store and a fake TinyTask server; three hosts on PostgreSQL with kill -9, a
## partition, a restart); prints their figures
chaos: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -s -m chaos tests/test_chaos.py tests/test_chaos_daemon.py tests/test_chaos_postgres.py

## lint: ruff on everything, the architecture contracts, the type checker
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check scheduler wrapper tests bench scripts
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

## coverage: the test suite measured across every process it starts (statements, branches)
coverage: $(VENV)/.installed-dev
	rm -f .coverage .coverage.* coverage.json
	COVERAGE_FILE=$(abspath .coverage) $(BIN)/coverage run -m pytest -q -p xdist -n 2
	COVERAGE_FILE=$(abspath .coverage) $(BIN)/coverage combine -q
	COVERAGE_FILE=$(abspath .coverage) $(BIN)/coverage report
	COVERAGE_FILE=$(abspath .coverage) $(BIN)/coverage json -q -o coverage.json
	$(BIN)/python scripts/coverage_summary.py coverage.json

## mutate: plant each bug of scripts/mutate.py's list in a scratch copy, run its tests
mutate: $(VENV)/.installed-dev
	$(BIN)/python scripts/mutate.py

## bench: the issue-17 benches (backlog scaling on both stores, throughput and refill
## latency next to task-spooler, start-up, wrapper), then one summary table; 3 minutes. BENCH_ARGS=--quick
## for a smoke run. The other scripts in bench/ run on their own.
bench: $(VENV)/.installed
	@if ! command -v tsp >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	        && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing task-spooler for the comparison (apt-get install task-spooler)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq task-spooler >/dev/null 2>&1 \
	        || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
	             apt-get install -y -qq task-spooler >/dev/null 2>&1; } \
	        || echo "task-spooler could not be installed: the table shows no ratio"; \
	fi
	@$(BIN)/python bench/summary.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-state demo-parallel-state .coverage .coverage.* coverage.json
