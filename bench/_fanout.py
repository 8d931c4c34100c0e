"""What the fan-out benchmarks (bench_dask.py, bench_ray.py) share: the phase of N `sleep 0.2` commands,
grd's side (the engine without Prefect, each unit run in place), the plain side's command, and the figures
each side gets. Per-command overhead is `wall * SLOTS / N - SLEEP_S`: the time each of the SLOTS slots spent
per command beyond the command itself."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SLOTS = 4  # workers (Dask) or CPUs (Ray): how many commands run at once
SLEEP_S = 0.2


def spec(commands: int, runner: str) -> str:
    rows = "\n".join(f"      - {{name: c{i}, run: [sleep, '{SLEEP_S}'], timeout: 60s}}"
                     for i in range(commands))
    return f"name: fan\nphases:\n  - name: p\n    runner: {runner}\n    max_parallel: {SLOTS}\n" \
           f"    commands:\n{rows}\n"


class InPlace:
    def phase(self, phase: Any, backstop_s: float | None, body: Callable[[], Any]) -> Any:
        return body()

    def command(self, plan: Any, backstop_s: float | None) -> Any:
        from grd_blocks.orchestration.benchmark import execute

        return execute(plan)


def grd(commands: int, runner: str, scratch: Path) -> tuple[float, int]:
    """grd's side: the phase run by the engine; its wall time and how many commands completed."""
    from grd_blocks.orchestration.benchmark import BenchmarkRun, run_benchmark
    from grd_blocks.orchestration.status import Status
    from grd_blocks.spec import parse_spec

    run = BenchmarkRun(spec=parse_spec(spec(commands, runner)), run_key=f"bench-{time.monotonic_ns()}",
                       logs_dir=scratch / "logs")
    start = time.monotonic()
    report = run_benchmark(run, InPlace(), report_path=scratch / "report.json").report
    wall = time.monotonic() - start
    done = sum(row.status is Status.COMPLETED for row in report.phases[0].commands)
    return wall, done


def sleep_once(_: int) -> int:
    """The plain side's command: `subprocess.run`, no grd."""
    return subprocess.run(["sleep", str(SLEEP_S)], check=False).returncode


def measure(sides: dict[str, Callable[[int, Path], tuple[float, int]]], commands: int,
            scratch: Path) -> dict[str, dict[str, Any]]:
    """Each side once untimed (imports, keepers, the workers' first task), then each timed in order."""
    for name, side in sides.items():
        side(SLOTS * 2, scratch / f"warm-{name}")
    results: dict[str, dict[str, Any]] = {}
    for name, side in sides.items():
        load = os.getloadavg()[0]
        wall, done = side(commands, scratch / name)
        results[name] = {
            "wall_s": round(wall, 2), "completed": done, "load_before": round(load, 2),
            "throughput_per_s": round(commands / wall, 2),
            "overhead_per_command_s": round(wall * SLOTS / commands - SLEEP_S, 4),
        }
        overhead_ms = results[name]["overhead_per_command_s"] * 1000
        print(f"{name}: {wall:.1f}s for {commands} ({done} completed), {overhead_ms:.1f} ms overhead "
              "per command", flush=True)
    return results


def write_results(path: Path, commands: int, results: dict[str, dict[str, Any]], plain: str,
                  **fields: Any) -> None:
    """``results`` with each side's ratio to the plain side (``wall_vs_<plain>``), the run's settings and
    the date, as JSON at ``path``."""
    for entry in results.values():
        entry[f"wall_vs_{plain}"] = round(entry["wall_s"] / results[plain]["wall_s"], 3)
    path.write_text(json.dumps({
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commands": commands, "sleep_s": SLEEP_S, **fields, "cpus": os.cpu_count(),
        "ideal_wall_s": commands * SLEEP_S / SLOTS, "sides": results,
    }, indent=2) + "\n")
    print(f"wrote {path}")


def commands_wanted(doc: str) -> int:
    """How many commands a side runs: ``--commands N`` (1000), or 100 with ``--quick``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 commands")
    args = parser.parse_args()
    return 100 if args.quick else int(args.commands)
