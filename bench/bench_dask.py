"""A phase of N commands (`sleep 0.2`) fanned out over a 4-worker local Dask cluster by grd, against the same
phase on this machine with `max_parallel: 4`, and against plain Dask futures each running `subprocess.run`
(no grd: no keeper, no deadline, no kill, output not kept).

One cluster (a `dask scheduler` and 4 `dask worker --nthreads 1 --no-nanny` processes on 127.0.0.1, each its
own process, stopped by pid) serves the two Dask sides; the sides run one after another in the order given,
after one untimed warm-up of each (imports, keepers, the workers' first task). grd's sides run the engine
without Prefect (orchestration/benchmark.py with a runner that runs each unit in place): what a Prefect task
adds per command is the same on both grd sides and is measured by bench_overhead.py. Per-command overhead is
`wall * 4 / N - 0.2`: the time each of the 4 slots spent per command beyond the command itself. Writes
bench/results/dask.json with each side's wall time, throughput, overhead and ratio to plain Dask, the load
before each side, and the date.

    .venv/bin/python bench/bench_dask.py [--commands 1000] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "dask.json"
WORKERS = 4
SLEEP_S = 0.2


def _spec(commands: int, runner: str) -> str:
    rows = "\n".join(f"      - {{name: c{i}, run: [sleep, '{SLEEP_S}'], timeout: 60s}}"
                     for i in range(commands))
    return f"name: fan\nphases:\n  - name: p\n    runner: {runner}\n    max_parallel: {WORKERS}\n" \
           f"    commands:\n{rows}\n"


class _InPlace:
    def phase(self, phase: Any, backstop_s: float | None, body: Callable[[], Any]) -> Any:
        return body()

    def command(self, plan: Any, backstop_s: float | None) -> Any:
        from grd_blocks.orchestration.benchmark import execute

        return execute(plan)


def _grd(commands: int, runner: str, scratch: Path) -> tuple[float, int]:
    from grd_blocks.orchestration.benchmark import BenchmarkRun, run_benchmark
    from grd_blocks.orchestration.status import Status
    from grd_blocks.spec import parse_spec

    run = BenchmarkRun(spec=parse_spec(_spec(commands, runner)), run_key=f"bench-{time.monotonic_ns()}",
                       logs_dir=scratch / "logs")
    start = time.monotonic()
    report = run_benchmark(run, _InPlace(), report_path=scratch / "report.json").report
    wall = time.monotonic() - start
    done = sum(row.status is Status.COMPLETED for row in report.phases[0].commands)
    return wall, done


def _sleep_once(_: int) -> int:
    return subprocess.run(["sleep", str(SLEEP_S)], check=False).returncode


def _plain(commands: int, address: str) -> tuple[float, int]:
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        start = time.monotonic()
        codes = client.gather(client.map(_sleep_once, range(commands), pure=False))
        wall = time.monotonic() - start
    return wall, sum(code == 0 for code in codes)


def _cluster(directory: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    dask = str(Path(sys.executable).with_name("dask"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    file = directory / "scheduler.json"
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(file)], env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    end = time.monotonic() + 60
    address = ""
    while not address and time.monotonic() < end:
        try:
            address = str(json.loads(file.read_text())["address"])
        except (OSError, ValueError, KeyError):  # not written yet, or being written
            time.sleep(0.05)
    if not address:
        raise RuntimeError(f"dask scheduler wrote no {file} in 60s")
    for _ in range(WORKERS):
        processes.append(subprocess.Popen([dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                           "--no-nanny", "--no-dashboard"], env=env, start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        client.wait_for_workers(WORKERS, timeout=60)
    return address, processes


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in reversed(processes):
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 commands")
    args = parser.parse_args()
    commands = 100 if args.quick else args.commands
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        scratch = Path(tmp)
        address, processes = _cluster(scratch)
        try:
            sides: dict[str, Callable[[int, Path], tuple[float, int]]] = {
                "plain_dask": lambda n, where: _plain(n, address),
                "grd_dask": lambda n, where: _grd(n, f"{{dask: '{address}'}}", where),
                "grd_local": lambda n, where: _grd(n, "local", where),
            }
            for name, side in sides.items():  # warm-up, untimed
                side(WORKERS * 2, scratch / f"warm-{name}")
            results: dict[str, dict[str, Any]] = {}
            for name, side in sides.items():
                load = os.getloadavg()[0]
                wall, done = side(commands, scratch / name)
                results[name] = {
                    "wall_s": round(wall, 2), "completed": done, "load_before": round(load, 2),
                    "throughput_per_s": round(commands / wall, 2),
                    "overhead_per_command_s": round(wall * WORKERS / commands - SLEEP_S, 4),
                }
                overhead_ms = results[name]["overhead_per_command_s"] * 1000
                print(f"{name}: {wall:.1f}s for {commands} ({done} completed), {overhead_ms:.1f} ms overhead "
                      "per command", flush=True)
        finally:
            _stop(processes)
    plain = results["plain_dask"]["wall_s"]
    for entry in results.values():
        entry["wall_vs_plain_dask"] = round(entry["wall_s"] / plain, 3)
    RESULTS.write_text(json.dumps({
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commands": commands, "sleep_s": SLEEP_S, "workers": WORKERS, "cpus": os.cpu_count(),
        "ideal_wall_s": commands * SLEEP_S / WORKERS, "sides": results,
        "note": "grd sides run the engine without Prefect; all Dask workers on this machine (127.0.0.1)",
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
