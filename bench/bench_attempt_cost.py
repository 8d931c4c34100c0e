"""The fixed cost of one `grd run` attempt, split into its parts, against a bare Prefect flow doing the same.

Each run starts a fresh process, as a user's shell does: `grd run` on a one-command spec (`true`, 60 s
timeout, a local store), or the baseline a careful user writes (``bench/_bare_attempt.py``: one Prefect flow,
one task running ``subprocess.run(["true"])``). Both use the same API setting: the ephemeral API
(``PREFECT_API_URL`` unset: each process starts its own server) or one running ``prefect server`` (started
once). Both write their stages' times to ``GRD_TIMELINE`` (grd_blocks/timeline.py: ``time.monotonic()``, one
clock for every process of the host); the benchmark takes the time just before it starts the process and
when the process has exited, so every part is a difference of real timestamps, none estimated. Sides
alternate run by run (which goes first alternates too), after one untimed warm-up each (the database's
creation and migrations, byte-compiling). Writes bench/results/attempt_cost.json: per side and API setting,
the median and spread (min-max) of the time to the command's start, to exit and of each part, every run's
marks, and the load before each run.

    .venv/bin/python bench/bench_attempt_cost.py [--runs 7] [--api ephemeral,server] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "attempt_cost.json"

SPEC = """\
name: cost
phases:
  - name: p
    commands:
      - {name: c, run: ["true"], timeout: 60s}
"""

# (from mark, to mark, what happens in between); "start" is the benchmark's Popen, "exit" its wait's end
PARTS: dict[str, list[tuple[str, str, str]]] = {
    "grd": [
        ("start", "cli", "Python start and grd's CLI imports"),
        ("cli", "spec", "spec load, run-key and report checks"),
        ("spec", "prefect", "Prefect import and settings"),
        ("prefect", "store", "store check (a probe object written and removed)"),
        ("store", "api", "ephemeral API server start (none with PREFECT_API_URL)"),
        ("api", "flow_module", "the flow module's imports (Prefect's engine)"),
        ("flow_module", "flow", "flow run creation"),
        ("flow", "run", "run setup (spec, store, progress read, first log lines)"),
        ("run", "phase", "phase subflow creation"),
        ("phase", "spawn", "command task creation, up to its spawn"),
        ("spawn", "exited", "the command (`true`) under its keeper"),
        ("exited", "phase_end", "task and phase end (row, progress commit, states)"),
        ("phase_end", "flow_end", "report, results artifact, flow end"),
        ("flow_end", "summary", "summary printed"),
        ("summary", "exit", "exit (Prefect's shutdown, API server stop)"),
    ],
    "bare": [
        ("start", "main", "Python start (interpreter, site)"),
        ("main", "cli", "imports (Prefect)"),
        ("cli", "flow_module", "flow and task defined"),
        ("flow_module", "flow", "ephemeral API server start (ephemeral only) and flow run creation"),
        ("flow", "task", "task run creation"),
        ("task", "spawn", "task start"),
        ("spawn", "exited", "the command (`subprocess.run(['true'])`)"),
        ("exited", "task_end", "task end"),
        ("task_end", "flow_end", "flow end"),
        ("flow_end", "summary", "result printed"),
        ("summary", "exit", "exit (Prefect's shutdown, API server stop)"),
    ],
}


def _marks(path: Path) -> dict[str, float]:
    marks: dict[str, float] = {}
    for line in path.read_text().splitlines():
        name, at = line.split()
        marks.setdefault(name, float(at))  # the first time a stage is reached
    return marks


def attempt(side: str, work: Path, env: dict[str, str], index: int) -> dict[str, Any]:
    """One timed process of ``side``; its marks as seconds since the benchmark started it."""
    timeline = work / f"{side}-{index}.timeline"
    if side == "grd":
        argv = [sys.executable, "-m", "grd_blocks.cli", "run", str(work / "spec.yaml"), "--store",
                str(work / "ckpt")]
    else:
        argv = [sys.executable, str(ROOT / "bench" / "_bare_attempt.py")]
    load = os.getloadavg()[0]
    with open(work / f"{side}-{index}.out", "w") as out:
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=work, env={**env, "GRD_TIMELINE": str(timeline)}, stdout=out,
                              stderr=subprocess.STDOUT, timeout=600, check=False)
        ended = time.monotonic()
    if proc.returncode != 0:
        raise SystemExit(f"{side} run {index} exited {proc.returncode}: see {work / f'{side}-{index}.out'}")
    marks = {name: round(at - started, 4) for name, at in _marks(timeline).items()}
    marks["exit"] = round(ended - started, 4)
    missing = {name for part in PARTS[side] for name in part[:2]} - {"start"} - set(marks)
    if missing:
        raise SystemExit(f"{side} run {index}: no mark {sorted(missing)} in {timeline}")
    return {"load_1min": load, "marks": marks}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def summary(side: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    marks = [run["marks"] for run in runs]
    parts = []
    for begin, end, what in PARTS[side]:
        spans = [m[end] - (0.0 if begin == "start" else m[begin]) for m in marks]
        parts.append({"from": begin, "to": end, "what": what, "s": _spread(spans)})
    return {"runs": len(runs), "to_command_start_s": _spread([m["spawn"] for m in marks]),
            "to_exit_s": _spread([m["exit"] for m in marks]), "parts": parts,
            "load_1min": [run["load_1min"] for run in runs], "marks": marks}


@contextlib.contextmanager
def api_setting(mode: str, home: Path) -> Iterator[dict[str, str]]:
    """The environment both sides run with: the ephemeral API, or one server started for the benchmark."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PREFECT_HOME=str(home),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    if mode == "ephemeral":
        yield env
        return
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield {**env, "PREFECT_API_URL": str(PREFECT_API_URL.value())}


def measure(mode: str, runs: int, work: Path) -> dict[str, Any]:
    (work / "spec.yaml").write_text(SPEC)
    with api_setting(mode, work / "prefect-home") as env:
        for side in ("grd", "bare"):
            attempt(side, work, env, -1)  # warm-up: database, byte-compiling; not counted
        timed: dict[str, list[dict[str, Any]]] = {"grd": [], "bare": []}
        for index in range(runs):
            for side in (("grd", "bare") if index % 2 == 0 else ("bare", "grd")):
                timed[side].append(attempt(side, work, env, index))
                print(f"{mode} {side} {index}: to command {timed[side][-1]['marks']['spawn']:.2f} s, "
                      f"to exit {timed[side][-1]['marks']['exit']:.2f} s", flush=True)
    result = {side: summary(side, timed[side]) for side in ("grd", "bare")}
    pairs = list(zip(timed["grd"], timed["bare"], strict=True))  # run i of each side, back to back
    result["grd_minus_bare"] = {
        f"to_{end}_s": _spread([g["marks"][mark] - b["marks"][mark] for g, b in pairs])
        for end, mark in (("command_start", "spawn"), ("exit", "exit"))
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per side and API setting (>= 5)")
    parser.add_argument("--api", default="ephemeral,server", help="ephemeral, server, or both (comma)")
    parser.add_argument("--quick", action="store_true", help="5 runs per side")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # the server mode's harness runs in this process
    runs = 5 if args.quick else args.runs
    result: dict[str, Any] = {
        "benchmark": "attempt_cost",
        "date": datetime.date.today().isoformat(),
        "config": {"runs": runs, "spec": SPEC, "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "loadavg_start": os.getloadavg(),
        "api": {},
    }
    for mode in args.api.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            result["api"][mode] = measure(mode, runs, Path(tmp))
    result["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for mode, sides in result["api"].items():
        for side, data in sides.items():
            print(f"{mode} {side}: to command {data['to_command_start_s']}, to exit {data['to_exit_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
