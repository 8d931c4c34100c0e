"""What a phase costs: one grd benchmark flow of ``--phases`` phases of one ``true`` each, against the flow a
careful user writes without grd (one Prefect flow calling as many subflows, each running one task with
``subprocess.run(["true"])``).

Each side runs in a fresh process of its own on a fresh `prefect server` (SQLite), sides alternating round by
round (which goes first alternates too); timed from the flow call to its return in that process. Reports per
side the median wall time of the flow and per phase, the spread (min-max) and every run, and the load average
before each run. Writes bench/results/phases.json (``--out``); ``--quick``: 3 rounds of 5 phases.

    .venv/bin/python bench/bench_phases.py [--phases 20] [--rounds 3] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "phases.json"

GRD_SIDE = textwrap.dedent("""
    import json, sys, time
    from grd_blocks.prefect_edge.benchmark_flow import benchmark
    started = time.perf_counter()
    state = benchmark(spec_path=sys.argv[1], run_key="phases", store=sys.argv[2], report_path=sys.argv[3],
                      return_state=True)
    print(json.dumps({"wall_s": time.perf_counter() - started, "state": state.name}))
""")

BARE_SIDE = textwrap.dedent("""
    import json, subprocess, sys, time
    from prefect import flow, task

    @task
    def run_true() -> int:
        return subprocess.run(["true"], check=False).returncode

    @flow
    def phase() -> int:
        return run_true()

    @flow
    def benchmark(phases: int) -> int:
        return sum(phase() != 0 for _ in range(phases))

    started = time.perf_counter()
    failed = benchmark(int(sys.argv[1]))
    state = "Completed" if not failed else "Failed"
    print(json.dumps({"wall_s": time.perf_counter() - started, "state": state}))
""")


def _spec(path: Path, phases: int) -> Path:
    phase = "  - name: p{}\n    commands:\n      - name: c\n        run: 'true'\n"
    path.write_text("name: phases\nphases:\n" + "".join(phase.format(index) for index in range(phases)))
    return path


def _one(side: str, phases: int) -> dict[str, Any]:
    from tests.fixtures.prefect_server import running_server

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="grd-bench-phases-") as tmp:  # its server's database with it
        home = Path(tmp)
        (home / "server").mkdir()
        with running_server(home / "server", database_url=None, backend="sqlite") as server:
            env = {**os.environ, **server.env, "PYTHONPATH": str(ROOT)}
            env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
            if side == "grd":
                argv = ["-c", GRD_SIDE, str(_spec(home / "spec.yaml", phases)), str(home / "store"),
                        str(home / "report.json")]
            else:
                argv = ["-c", BARE_SIDE, str(phases)]
            done = subprocess.run([sys.executable, *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                                  timeout=1800, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{side} side exited {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if result["state"] != "Completed":
        raise SystemExit(f"{side} side ended {result['state']}")
    return {"wall_s": round(result["wall_s"], 3), "load": round(load, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 5 phases")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.phases, args.rounds = 5, 3
    if args.phases < 1 or args.rounds < 1:
        parser.error(f"--phases {args.phases} and --rounds {args.rounds} must both be at least 1")
    sys.path.insert(0, str(ROOT))
    runs: dict[str, list[dict[str, Any]]] = {"grd": [], "bare": []}
    for round_index in range(args.rounds):
        for side in ("grd", "bare") if round_index % 2 == 0 else ("bare", "grd"):
            run = _one(side, args.phases)
            runs[side].append(run)
            print(f"round {round_index + 1} {side}: {run['wall_s']:.2f} s", flush=True)
    summary: dict[str, Any] = {}
    for side, done in runs.items():
        walls = [run["wall_s"] for run in done]
        summary[side] = {"median_s": round(statistics.median(walls), 3), "min_s": min(walls),
                         "max_s": max(walls), "per_phase_s": round(statistics.median(walls) / args.phases, 3),
                         "runs": done}
    result = {"date": datetime.date.today().isoformat(), "phases": args.phases, "rounds": args.rounds,
              "command": "true", "server": "prefect server (SQLite), a fresh one per run", **summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for side in ("grd", "bare"):
        print(f"{side}: {summary[side]['median_s']:.2f} s ({summary[side]['min_s']:.2f}-"
              f"{summary[side]['max_s']:.2f}), {summary[side]['per_phase_s']:.3f} s per phase")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
