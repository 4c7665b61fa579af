# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

# Nothing phones home from tests or the demo.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install check-deps lint test postgres demo bench sandbox up down clean

install: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

# The venv holds exactly requirements.lock (and the project, -e), and `pip check` is clean.
check-deps: install
	$(BIN)/python .ci/check-deps $(VENV)

# ruff (lint, then formatting, checked not changed) and mypy, configured in pyproject.toml.
# `$(BIN)/ruff format .` and `$(BIN)/ruff check --fix .` fix most of what they find.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole suite on SQLite, then every database test again on PostgreSQL (a throwaway
# cluster per test process, tests/pg.py; skipped with the reason where none can start).
test: install check-deps postgres
	$(BIN)/python -m pytest -n 2 -q
	PSYNC_TEST_DATABASE=postgres $(BIN)/python -m pytest -n 2 -q -rs -m database

# Debian's PostgreSQL server, unless one is installed (the tests start their own cluster).
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } || \
	  echo "PostgreSQL is not installed and could not be: its tests will be skipped"

demo: install
	$(BIN)/psync demo

# Every benchmark, then bench/REPORT.md from their results (bench/results/*.json).
bench: install
	$(BIN)/python -m bench
	$(BIN)/python -m bench.bookings
	$(BIN)/python -m bench.student_id
	$(BIN)/python -m bench.erasure
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.intake
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.report

sandbox: install
	$(BIN)/psync sandbox --port 8700

# A local Prefect server with the UI, the sandbox, the work pool, every deployment and a
# worker, in the background (psync/stack.py); `make down` stops them.
up: install
	$(BIN)/psync up

down:
	$(BIN)/psync down

clean:
	rm -rf $(VENV) .psync
