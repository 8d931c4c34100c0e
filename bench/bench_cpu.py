"""Where the CPU of a phase of ``n`` commands goes, grd's flow beside the bare Prefect flow of bench_scale.py:
each side in a child process of its own on a fresh `prefect server` (SQLite), one after the other.

Read from /proc around the flow call (not by the code measured): the machine's busy CPU (/proc/stat), each
process's CPU with its reaped children (the server, the flow process, grd's keepers with the commands they
ran, the bare flow's commands in its own figure), and each thread of the flow process (sampled every 0.2 s,
named by Python's thread names; pool threads summed under their prefix). All per command, in ms. One run
each side; the figures move by 10-20% from run to run on a loaded two-core machine. Prints JSON lines;
writes nothing.

    python bench/bench_cpu.py --n 3000 [--command true] [--parallel 1] [--quick: 300 commands]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HZ = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / HZ  # all but idle and iowait


def _processes() -> dict[int, tuple[str, int, float]]:
    """pid -> (command line, parent pid, CPU seconds with its reaped children)."""
    found: dict[int, tuple[str, int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(name)] = (cmdline[:80], int(fields[1]), sum(int(x) for x in fields[11:15]) / HZ)
    return found


def _thread_cpu(seen: dict[int, tuple[str, float]], stop: threading.Event) -> None:
    me = os.getpid()
    while not stop.is_set():
        names = {thread.native_id: thread.name for thread in threading.enumerate()}
        for tid in os.listdir(f"/proc/{me}/task"):
            try:
                fields = Path(f"/proc/{me}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = names.get(int(tid)) or seen.get(int(tid), ("?", 0.0))[0]
            seen[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / HZ)
        stop.wait(0.2)


def child(side: str, n: int, argv: list[str], parallel: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_scale  # the same two flows as the Scale benchmark

    from tests.fixtures.prefect_server import running_server

    home = Path(tempfile.mkdtemp(prefix="grd-bench-cpu-"))  # removed below, its server's database with it
    (home / "server").mkdir()
    with running_server(home / "server", database_url=None, backend="sqlite") as server:
        os.environ.update(server.env)
        threads: dict[int, tuple[str, float]] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_thread_cpu, args=(threads, stop), daemon=True)
        sampler.start()
        (home / "work").mkdir()
        before, busy, started = _processes(), _machine_busy_s(), time.perf_counter()
        result = bench_scale.child(side, n, argv, parallel, home / "work")
        wall, busy, after = time.perf_counter() - started, _machine_busy_s() - busy, _processes()
        stop.set()
        sampler.join()
    shutil.rmtree(home, ignore_errors=True)
    me, per = os.getpid(), 1000.0 / n
    mine = {pid for pid, (_, parent, _) in after.items() if parent == me}
    processes: dict[str, float] = {}
    for pid, (cmdline, parent, cpu) in after.items():
        spent = cpu - (before[pid][2] if pid in before and before[pid][0] == cmdline else 0.0)
        if spent <= 0.05:
            continue
        if pid == me:
            role = "flow process"  # with the commands it ran itself (the bare flow's subprocess.run)
        elif "prefect server start" in cmdline:
            role = "prefect server"
        elif pid in mine or parent in mine:
            role = "grd guardian and keepers"  # with the commands they ran
        else:
            role = "other"  # not this run's: the machine's own
        processes[role] = processes.get(role, 0.0) + spent
    by_thread: dict[str, float] = {}
    for name, cpu in threads.values():
        key = name.split("_")[0] if "_" in name and name.split("_")[-1].isdigit() else name
        by_thread[key] = by_thread.get(key, 0.0) + cpu
    def largest_first(spent: dict[str, float], digits: int) -> dict[str, float]:
        return {k: round(v * per, digits) for k, v in sorted(spent.items(), key=lambda x: -x[1])
                if v * per >= 0.01}

    return {"side": side, "commands": n, "command": " ".join(argv), "max_parallel": parallel,
            "status": result["status"], "wall_ms": round(wall * per, 2),
            "machine_cpu_ms": round(busy * per, 2), "processes_cpu_ms": largest_first(processes, 2),
            "threads_cpu_ms": largest_first(by_thread, 3), "load": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--command", default="true")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="300 commands (make bench's short variant)")
    parser.add_argument("--child", choices=["bare", "grd"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.n = 300
    if args.child:
        print(json.dumps(child(args.child, args.n, args.command.split(), args.parallel)))
        return 0
    for side in ("grd", "bare"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        done = subprocess.run([sys.executable, __file__, "--child", side, "--n", str(args.n), "--command",
                               args.command, "--parallel", str(args.parallel)], cwd=ROOT, capture_output=True,
                              text=True, timeout=3600, check=False, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(f"{side} side exited {done.returncode}: {done.stderr[-2000:]}", file=sys.stderr)
            return 1
        print(lines[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
