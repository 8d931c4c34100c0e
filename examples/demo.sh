#!/usr/bin/env bash
# `make demo`: run examples/benchmark.yaml on an ephemeral Prefect API and check the report is what we promise.
# The benchmark's own exit code is 1 (one command fails on purpose, one times out): that is expected.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
mkdir -p reports
echo "== grd run examples/benchmark.yaml (first start of the ephemeral Prefect API migrates SQLite: ~20-30 s)"
.venv/bin/grd run examples/benchmark.yaml --report reports/demo.json 2>&1 | tee reports/demo.out
code=${PIPESTATUS[0]}
echo
echo "== grd exited with $code (0 completed, 1 failed, 124 timed out, 2 bad spec)"
.venv/bin/python examples/check_demo.py reports/demo.json "$code" || exit 1
.venv/bin/python examples/check_demo.py --output reports/demo.out || exit 1
key=$(.venv/bin/python -c 'import json; print(json.load(open("reports/demo.json"))["run_key"])')
echo
echo "== retry: grd run examples/benchmark.yaml --resume $key (finished commands are skipped, training resumes)"
.venv/bin/grd run examples/benchmark.yaml --resume "$key" --report reports/demo-resumed.json 2>&1 \
  | tee reports/demo-resumed.out
code=${PIPESTATUS[0]}
echo
echo "== grd exited with $code"
.venv/bin/python examples/check_demo.py --output reports/demo-resumed.out || exit 1
exec .venv/bin/python examples/check_demo.py --resumed reports/demo.json reports/demo-resumed.json "$code"
