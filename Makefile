# The two commands a user needs: `make demo` and `make test`. Both set up everything they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test lint bench install browser postgres clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The UI end-to-end tests drive Debian's chromium headless; install it where it is missing (needs root).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The end-to-end tests also run against a Prefect server on PostgreSQL (a throwaway cluster on 127.0.0.1 started
# by tests/fixtures/postgres.py from Debian's binaries); install them where they are missing (needs root).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

demo: $(STAMP)
	bash examples/demo.sh

lint: $(STAMP)
	$(PY) -m ruff check grd_blocks flows tests bench examples
	$(PY) -m mypy

# tests/training asserts bit-for-bit RNG continuity: it runs in a pytest process of its own, before any Prefect
# flow has run there, because Prefect's background services (started by the first in-process flow run) may draw
# from Python's global `random` at any moment.
test: lint browser postgres
	$(PY) -m pytest -q --ignore=tests/training
	$(PY) -m pytest -q tests/training

bench: $(STAMP)
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
