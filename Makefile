# ToxWatch: `make demo` runs the embedded demo, `make test` runs the gate and the tests.
# Both set up the virtual environment first (Python 3.11, pinned requirements.lock).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.toxwatch-installed

.PHONY: setup demo test check bench clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/toxwatch demo $(ARGS)

check: $(STAMP)
	$(BIN)/ruff check domain services projections infra tests
	$(BIN)/mypy
	$(BIN)/lint-imports

test: check
	bash scripts/ensure-postgres
	bash scripts/ensure-monitoring-tools
	bash scripts/ensure-report-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/toxwatch bench all $(ARGS)

clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache
