# ESUS developer entry points. Only python3 (3.11+), make and git are needed: everything else is
# installed into .venv by the first target that needs it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 3000
export HOST PORT

# pytest-xdist workers for `make test`: each runs whole test files with its own local stack (README "Tests").
TEST_WORKERS ?= 2

.PHONY: setup run test test-full lint typecheck unit handlers bench template clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/esus run

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

# What CI runs (.ci/run, with CI=true: the full hypothesis/schemathesis example counts). Whole-corpus runs
# (marked slow, minutes each) are left to `make test-full`.
TEST_SELECTION ?= -m "not slow"
test: lint typecheck
	$(BIN)/pytest -n $(TEST_WORKERS) --durations=15 $(TEST_SELECTION)

# The inner loop: the pure unit tests (under a minute). `make handlers`: the route handlers on in-process moto
# (fault injection, fuzzing, the scope and BOLA matrices). Neither starts a local stack. Same workers as `make test`.
unit: setup
	$(BIN)/pytest -n $(TEST_WORKERS) tests/unit

handlers: setup
	$(BIN)/pytest -n $(TEST_WORKERS) tests/handlers

# `make test` with the whole Synthea corpus imported (instead of a sample holding every resource type) and the
# whole-corpus search checks (marked slow).
test-full:
	ESUS_FULL_CORPUS=1 $(MAKE) test TEST_SELECTION=

# template.yaml's per-function block, from the route table in infra/esus_dev/codegen/routes.py.
template: setup
	$(BIN)/python -m esus_dev.codegen.template_gen

# The benchmark (docs/BENCH.md: add --write docs/BENCH.md), the load test, and the outside cold-start check:
# `import app` of functions/create against a bare boto3 + Powertools resolver, paired runs, ratio <= 1.3.
bench: setup
	$(BIN)/python -m esus_dev.bench
	$(BIN)/python -m esus_dev.bench.load
	$(BIN)/python -m esus_dev.bench.importcheck

clean:
	rm -rf $(VENV) .esus .pytest_cache .mypy_cache .ruff_cache .aws-sam
