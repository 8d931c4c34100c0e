"""1,000 and 10,000 commands in one phase: grd's benchmark flow against a bare Prefect flow, on a real
`prefect server` (SQLite, and PostgreSQL), each side in a flow process of its own.

For each server, command (``true``, ``sleep 0.05``), concurrency (``max_parallel`` 1 and 8) and size, the two
sides run one after the other, their order alternating per configuration, each in a fresh child process:

* **bare**: a Prefect flow of ``n`` tasks, each ``subprocess.run(argv)``: called one by one at concurrency 1,
  else all submitted to a ``ThreadPoolTaskRunner(max_workers=P)`` and waited for (what a careful user writes).
* **grd**: the ``grd-benchmark`` flow on a spec of ``n`` commands in one phase with ``max_parallel: P``
  (budgets, kill-ladder runner, output streaming, progress committed to a local store, report).

Each child reports its flow's wall time (from calling the flow to its return; both sides' modules are imported
and the spec file written before), its peak RSS (``VmHWM``, this process only: the flow process) and
the HTTP requests its Prefect clients sent (counted by wrapping their ``send``), so "no API round trip per
command beyond Prefect's own task run" is a count, not a claim. Each side gets a fresh server with an empty
database (SQLite in its own home; a new database in one PostgreSQL cluster): a server records task runs from
events after a flow has ended, so on a shared server the side that comes second would pay for the first's
backlog.

Writes ``bench/results/scale.json``; ``--quick`` runs 200 and 1,000 commands of ``true`` on SQLite only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMANDS = {"true": ["true"], "sleep": ["sleep", "0.05"]}
TARGET_RATIO = 1.1
TARGET_RSS_GROWTH = 0.10


# --- the child: one side, one flow, in this process ------------------------------------------------------


def _count_requests() -> dict[str, int]:
    """Wrap the send of Prefect's httpx clients (sync and async) to count every request they make."""
    from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient

    counts = {"requests": 0}
    async_send, sync_send = PrefectHttpxAsyncClient.send, PrefectHttpxSyncClient.send

    async def counted_async(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        counts["requests"] += 1
        return await async_send(self, request, *args, **kwargs)

    def counted_sync(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        counts["requests"] += 1
        return sync_send(self, request, *args, **kwargs)

    PrefectHttpxAsyncClient.send = counted_async  # type: ignore[method-assign]
    PrefectHttpxSyncClient.send = counted_sync  # type: ignore[method-assign]
    return counts


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _spec(path: Path, n: int, argv: list[str], parallel: int) -> Path:
    lines = ["name: scale", "timeout: 4h", "phases:", "  - name: p", "    timeout: 4h",
             f"    max_parallel: {parallel}", "    commands:"]
    run = json.dumps(argv)
    lines += [f"      - {{name: c{i}, run: {run}, timeout: 60s}}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def child(side: str, n: int, argv: list[str], parallel: int, work: Path) -> dict[str, Any]:
    counts = _count_requests()
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.futures import wait
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(name="bare-command", cache_policy=NO_CACHE, persist_result=False)
    def bare_task(command: list[str]) -> int:
        return subprocess.run(command, check=False).returncode

    @flow(name="bench-scale-bare", task_runner=ThreadPoolTaskRunner(max_workers=parallel))
    def bare_flow() -> int:
        if parallel == 1:
            return sum(bare_task(argv) != 0 for _ in range(n))
        futures = [bare_task.submit(argv) for _ in range(n)]
        wait(futures)
        return sum(future.result() != 0 for future in futures)

    from grd_blocks.prefect_edge.benchmark_flow import benchmark  # both sides' modules imported untimed
    from grd_blocks.report import BenchmarkReport

    spec = _spec(work / "spec.yaml", n, argv, parallel)  # the user's file, written before either side starts
    status = "COMPLETED"
    before = counts["requests"]
    started = time.perf_counter()
    if side == "bare":
        failed = bare_flow()
        status = "COMPLETED" if failed == 0 else f"{failed} FAILED"
    else:
        state = benchmark(spec_path=str(spec), run_key="scale", store=str(work / "ckpt"),
                          report_path=str(work / "report.json"), return_state=True)
        status = BenchmarkReport.model_validate(state.result(raise_on_failure=False)).status.value
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "per_command_ms": round(wall / n * 1000, 2),
            "peak_rss_mb": _peak_rss_mb(), "api_requests": counts["requests"] - before, "status": status}


# --- the parent: servers, the matrix, the results ---------------------------------------------------------


@contextlib.contextmanager
def _cluster(backend: str) -> Iterator[Any]:
    """The PostgreSQL cluster the sides' databases live in (None for SQLite: each side's is in its home)."""
    if backend != "postgresql":
        yield None
        return
    from tests.fixtures.postgres import postgres_cluster

    with postgres_cluster() as cluster:
        yield cluster


@contextlib.contextmanager
def _server(backend: str, cluster: Any, home: Path) -> Iterator[dict[str, str]]:
    """A fresh `prefect server` on an empty database: SQLite in ``home``, or a new one in ``cluster``."""
    from tests.fixtures.prefect_server import running_server

    home.mkdir(parents=True, exist_ok=True)
    database_url = None
    if cluster is not None:
        from tests.fixtures.postgres import _as_postgres, postgres_bin

        name = f"prefect_{home.parent.name.replace('-', '_')}"
        bindir = postgres_bin()
        assert bindir is not None
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U",
                        "postgres", name], check=True, capture_output=True, timeout=60, **_as_postgres())
        database_url = f"postgresql+asyncpg://postgres@127.0.0.1:{cluster.port}/{name}"
    with running_server(home, database_url=database_url, backend=backend) as server:
        yield server.env


def _side(env: dict[str, str], side: str, n: int, command: str, parallel: int, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True)
    child_env = {**env, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", side, "--n", str(n), "--command", command,
                           "--parallel", str(parallel), "--work", str(work)], env=child_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=4 * 3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{side} side exited {done.returncode}: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _configs(args: argparse.Namespace) -> list[tuple[int, str, int]]:
    return [(n, command, parallel) for n in args.commands for command in args.command
            for parallel in args.parallel
            if not (command == "sleep" and parallel == 1 and n > args.max_serial_sleep_n)]


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or "unknown"


def parent(args: argparse.Namespace) -> int:
    target = Path(args.out)
    out: dict[str, Any] = {"host": platform.node(), "date": time.strftime("%Y-%m-%d"),
                           "python": platform.python_version(),
                           "cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                           "target_ratio": TARGET_RATIO, "target_rss_growth": TARGET_RSS_GROWTH,
                           "servers": {}, "measured": {}}
    if args.update and target.exists():  # keep the other servers' rows, each with when and where measured
        earlier = json.loads(target.read_text())
        out["servers"] = {name: rows for name, rows in earlier.get("servers", {}).items()
                          if name.removesuffix("_rss_growth") not in args.servers}
        out["measured"] = {name: when for name, when in earlier.get("measured", {}).items()
                           if name not in args.servers}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.servers:
            out["measured"][backend] = {"date": time.strftime("%Y-%m-%d"), "commit": _commit(),
                                        "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
            rows: list[dict[str, Any]] = []
            with _cluster(backend) as cluster:
                for index, (n, command, parallel) in enumerate(_configs(args)):
                    row: dict[str, Any] = {"commands": n, "command": " ".join(COMMANDS[command]),
                                           "max_parallel": parallel}
                    for side in ("bare", "grd") if index % 2 == 0 else ("grd", "bare"):
                        where = Path(tmp) / f"{backend}-{index}-{side}"
                        with _server(backend, cluster, where / "home") as env:
                            row[side] = _side(env, side, n, command, parallel, where / "work")
                    row["ratio"] = round(row["grd"]["wall_s"] / row["bare"]["wall_s"], 3)
                    row["extra_requests_per_command"] = round(
                        (row["grd"]["api_requests"] - row["bare"]["api_requests"]) / n, 4)
                    row["load"] = [round(x, 2) for x in os.getloadavg()]
                    ok = ok and row["grd"]["status"] == "COMPLETED"
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            out["servers"][backend] = rows
            out["servers"][backend + "_rss_growth"] = _rss_growth(rows)
            out["measured"][backend]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {target}")
    return 0 if ok else 1


def _rss_growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """grd's peak RSS at the largest size against the smallest, per command and concurrency."""
    growth = []
    for command in sorted({row["command"] for row in rows}):
        for parallel in sorted({row["max_parallel"] for row in rows}):
            same = [row for row in rows if row["command"] == command and row["max_parallel"] == parallel]
            same.sort(key=lambda row: row["commands"])
            if len(same) < 2:
                continue
            small, large = same[0], same[-1]
            grd = [small["grd"]["peak_rss_mb"], large["grd"]["peak_rss_mb"]]
            bare = [small["bare"]["peak_rss_mb"], large["bare"]["peak_rss_mb"]]
            growth.append({"command": command, "max_parallel": parallel, "from": small["commands"],
                           "to": large["commands"], "grd_peak_rss_mb": grd, "bare_peak_rss_mb": bare,
                           "grd_growth": round(grd[1] / grd[0] - 1, 3),
                           "bare_growth": round(bare[1] / bare[0] - 1, 3)})
    return growth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--servers", type=lambda s: s.split(","), default=["sqlite", "postgresql"])
    parser.add_argument("--commands", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000])
    parser.add_argument("--command", type=lambda s: s.split(","), default=["true", "sleep"])
    parser.add_argument("--parallel", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--max-serial-sleep-n", type=int, default=1000,
                        help="largest size for `sleep 0.05` at max_parallel 1 (10,000 of them sleep 500 s "
                        "per side)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    parser.add_argument("--update", action="store_true",
                        help="replace only the servers measured now in --out, keeping the others' rows")
    parser.add_argument("--child", choices=["bare", "grd"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.n, COMMANDS[args.command[0]], args.parallel[0], Path(args.work))
        print(json.dumps(result), flush=True)
        return 0
    if args.quick:
        args.servers, args.commands, args.command = ["sqlite"], [200, 1000], ["true"]
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
