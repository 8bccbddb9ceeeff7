# The commands the README names. Every target sets up what it needs on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := bulkmail workers cli

.PHONY: install bytecode services lint test bench demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Every CLI call and worker imports these; where PYTHONDONTWRITEBYTECODE is set, Python would
# compile them from source in each process (a third of a second each, hundreds of times a test run).
bytecode: install
	$(BIN)/python -m compileall -q $(PACKAGES)

services:
	bash .ci/services

lint: install
	$(BIN)/ruff check $(PACKAGES) tests
	$(BIN)/ruff format --check $(PACKAGES) tests
	$(BIN)/mypy --strict -p bulkmail -p workers -p cli

test: install bytecode services lint
	$(BIN)/pytest

# No services needed: SQLite, an in-process SMTP catcher filing into ./demo-outbox/.
demo: bytecode
	$(BIN)/bulkmail demo

# Not part of `make test`: minutes of full load. BENCH_SCALE=0.1 for a quick look. Runs on the
# machine's PostgreSQL (127.0.0.1:5432, or BULKMAIL_TEST_PG), started here when down.
bench: bytecode
	bash .ci/services postgres
	$(BIN)/python tests/bench/run_all.py

clean:
	rm -rf $(VENV) .bench-venv .mypy_cache .ruff_cache .pytest_cache .hypothesis
