# `make demo` and `make test` work from nothing: they create .venv and install the project
# into it the first time, and skip that step while pyproject.toml is unchanged.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install demo test lint clean reliability soak bench browser

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,aws]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/batchscore quickstart

# The browser tests/test_report.py opens the run report in: Debian's Chromium, driven by
# Playwright (no browser download). Installed as root, as CI runs, when it is missing.
CHROMIUM := /usr/bin/chromium
browser: $(CHROMIUM)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "$(CHROMIUM) is missing and this is not root: run 'sudo apt-get install -y chromium'" \
			"(tests/test_report.py skips its browser test without it)"; \
	fi

test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fault, concurrency and bad-input suites, then docs/reliability.md from their output.
RELIABILITY_TESTS := tests/test_faults.py tests/test_concurrency.py tests/test_bad_input.py \
	tests/test_config.py tests/test_registry.py tests/test_cli.py tests/test_pipeline.py \
	tests/test_operations.py tests/test_integrity.py tests/test_security.py tests/test_locks.py \
	tests/test_archives.py tests/test_model_cache.py tests/test_workspace.py tests/test_ingest.py
# `make test` kills 3 times per failpoint and 12 times at random; this runs 4 and 24.
reliability: $(STAMP)
	rm -f build/reliability.json
	BATCHSCORE_KILL_REPEATS=4 BATCHSCORE_SOAK=24 $(BIN)/python -m pytest -q $(RELIABILITY_TESTS)
	$(BIN)/python scripts/reliability_report.py

soak: $(STAMP)
	rm -f build/reliability.json
	BATCHSCORE_SOAK=500 $(BIN)/python -m pytest -q tests/test_faults.py
	$(BIN)/python scripts/reliability_report.py

# Benchmarks (not tests): batchscore (local and Ray) vs the floor, the compiled floor, the
# seed's way and mlflow models predict (bench/run.py; docs/benchmarks.md).
SIZES ?= 1e5,1e6
REPEAT ?= 3
bench: $(STAMP)
	$(BIN)/python bench/run.py --sizes $(SIZES) --repeat $(REPEAT)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench

clean:
	rm -rf .batchscore
