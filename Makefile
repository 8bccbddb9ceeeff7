# The commands the README names. Every target sets up what it needs on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PACKAGES := bulkmail workers cli
# Every install takes the versions pinned in constraints.txt (refreshed by `make lock`).
PIP_INSTALL = $(BIN)/python -m pip install --quiet -c constraints.txt
# `make demo` needs the demo extra, which the dev extra of `make install` includes.
DEMO_STAMP := $(if $(wildcard $(VENV)/.installed-dev),$(VENV)/.installed-dev,$(VENV)/.installed-demo)

.PHONY: install bytecode services lint test bench chaos demo lock clean

$(VENV)/.installed-%: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e '.[$*]'
	touch $@

install: $(VENV)/.installed-dev

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

# Two pytest workers, each with servers of its own and each test file on one of them: most tests
# wait on processes and servers, and one worker took 14 minutes where two take 8.
test: install bytecode services lint
	$(BIN)/pytest -n 2 --dist loadfile

# No services needed: the embedded PostgreSQL (a database bulkmail_demo of its own), the
# eager Celery broker, a poller in-process, and an SMTP catcher filing into ./demo-outbox/.
demo: $(DEMO_STAMP)
	$(BIN)/python -m compileall -q $(PACKAGES)
	$(BIN)/bulkmail demo

# Not part of `make test`: minutes of full load. BENCH_SCALE=0.1 for a quick look. Runs on the
# machine's PostgreSQL (127.0.0.1:5432, or BULKMAIL_TEST_PG), started here when down.
bench: bytecode
	bash .ci/services postgres
	$(BIN)/python tests/bench/run_all.py

# Not part of `make test` (which runs a reduced run): 500,000 recipients while processes are
# killed and servers restarted, on servers of its own; minutes. CHAOS_ARGS="--seed N" repeats one.
chaos: bytecode services
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

# constraints.txt again: the newest versions pyproject.toml allows, of everything the dev and
# demo extras install, resolved in a virtualenv of its own. Commit it once `make test` passes.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet '.[dev]'
	{ echo "# Every dependency of bulkmail and its dev and demo extras, pinned: \`make lock\` writes this."; \
	  echo "# Resolved with Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version(), platform.system(), platform.machine())')."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude bulkmail; } > constraints.txt
	rm -rf $(LOCK_VENV) build

clean:
	rm -rf $(VENV) $(LOCK_VENV) .bench-venv .mypy_cache .ruff_cache .pytest_cache .hypothesis
