#!/usr/bin/env bash
# Runs every benchmark; each writes its JSON (with its baseline measured side by side) under bench/results/.
# Pass --quick (BENCH_ARGS=--quick make bench) for the short variants.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
status=0
for script in bench/bench_*.py; do
    echo "== $script"
    "$PY" "$script" ${BENCH_ARGS:-} || { echo "!! $script failed"; status=1; }
done
exit $status
