# The two commands a user needs: `make demo` and `make test`. Both set up everything they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test check lint bench soak install browser postgres clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	@# bytecode on both cores (about 20 s), once, before the test workers would each compile the same imports;
	@# a few files in packages are for newer Pythons and never imported here, so errors are not fatal
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
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

# The suite runs on TEST_WORKERS pytest-xdist workers: most tests wait on servers, processes and deadlines, so
# more workers than cores pays. The end-to-end tests (a real server, its worker, a browser) then run on a host
# no other test loads, one worker per database backend (`--dist loadgroup`, tests/conftest.py): with 4 busy
# workers beside them, the UI's requests to a starved SQLite server failed ("Something went wrong", "database
# is locked") in 2 clean runs of 3. Tests marked pristine_process (tests/training) assert bit-for-bit RNG continuity
# in-process: they run in a pytest process of their own where no Prefect flow has run, because Prefect's
# background services (started by the first in-process flow run) may draw from Python's global `random`.
TEST_WORKERS ?= 4
PYTEST := $(PY) -m pytest -q
XDIST = -n $(TEST_WORKERS) --dist loadgroup
# The fast lane: no server (Prefect, SeaweedFS), no browser, no torch in other processes, no long fault test.
FAST := not server and not e2e and not torch_procs and not slow

test: lint browser postgres
	$(PYTEST) $(XDIST) -m "not e2e and not pristine_process and not soak"
	$(PYTEST) -n 2 --dist loadgroup -m e2e tests/e2e
	$(PYTEST) -m pristine_process tests/training

check: lint
	$(PYTEST) -n 2 --dist loadgroup -m "$(FAST) and not pristine_process"
	$(PYTEST) -m "$(FAST) and pristine_process" tests/training

# The fault runs of 100 trials or more (sharded checkpoints SIGKILLed on local disk and S3): 10-30 minutes on
# 2 cores, so not part of `make test`, whose runs keep a few trials of each.
soak: $(STAMP)
	$(PYTEST) -m soak tests/checkpoint

bench: $(STAMP)
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
