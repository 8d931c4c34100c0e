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

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "dask.json"

from bench._fanout import SLOTS as WORKERS  # noqa: E402
from bench._fanout import commands_wanted, grd, measure, sleep_once, write_results  # noqa: E402  (after ROOT is on the path)


def _plain(commands: int, address: str) -> tuple[float, int]:
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        start = time.monotonic()
        codes = client.gather(client.map(sleep_once, range(commands), pure=False))
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
    commands = commands_wanted(__doc__ or "")
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        scratch = Path(tmp)
        address, processes = _cluster(scratch)
        try:
            sides: dict[str, Callable[[int, Path], tuple[float, int]]] = {
                "plain_dask": lambda n, where: _plain(n, address),
                "grd_dask": lambda n, where: grd(n, f"{{dask: '{address}'}}", where),
                "grd_local": lambda n, where: grd(n, "local", where),
            }
            results = measure(sides, commands, scratch)
        finally:
            _stop(processes)
    write_results(RESULTS, commands, results, "plain_dask", workers=WORKERS,
                  note="grd sides run the engine without Prefect; all Dask workers on this machine "
                  "(127.0.0.1)")


if __name__ == "__main__":
    main()
