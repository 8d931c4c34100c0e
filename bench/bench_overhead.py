"""What grd adds per command over a bare Prefect task running the same command; a 1,000-command benchmark.

Per command (``per_command``): one flow on one Prefect API alternates blocks of ``--block`` commands: a
bare Prefect task that runs ``true`` with ``subprocess.run`` (called in the flow, as a user would), then as
many grd commands run exactly as the phase flow runs them (the phase scheduler starts one ``grd-command``
task per command in a worker thread: budget, environment, kill-ladder runner with a log file and line
streaming, progress recorded), and as many bare Prefect tasks that run ``true`` through grd's runner
(``run_command`` as grd calls it), which splits the overhead into runner and orchestration. The side that goes
first rotates per round. Each command's own time is measured around the task call; each block's wall time
(grd's includes the progress snapshots its background writer takes meanwhile, as in a phase, plus the run's
final flush spread over its commands) gives the mean per command with scheduling. Median and p90, the
differences and the ratio.

Components (``components``): the same ``true`` through ``subprocess.run`` and through grd's ``run_command``
(as grd calls it: PTY, log file, cgroup or subreaper), interleaved, in this process, without a task.

Benchmark (``benchmark``): the ``grd-benchmark`` flow on a 1,000-command spec (one phase), and a bare flow
running 1,000 bare tasks, on the same API, in the order bare, grd, bare (the bare wall is their mean).

Writes ``bench/results/overhead.json``. ``--quick``: 50 commands per side and a 200-command benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.exceptions import PrefectHTTPStatusError  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from grd_blocks.orchestration.plan import PlannedCommand  # noqa: E402
from grd_blocks.orchestration.run import BenchmarkRun  # noqa: E402
from grd_blocks.orchestration.scheduler import run_commands  # noqa: E402
from grd_blocks.prefect_edge.benchmark_flow import PrefectRunner, benchmark  # noqa: E402
from grd_blocks.prefect_edge.store import open_store  # noqa: E402
from grd_blocks.report import BenchmarkReport, CommandReport  # noqa: E402
from grd_blocks.spec import load_spec  # noqa: E402

TARGET_MS = 3.0
ARGV = ["true"]
_ENV = dict(os.environ)
_CANCEL = threading.Event()


def _spec(path: Path, n: int) -> Path:
    lines = ["name: overhead", "timeout: 1h", "phases:", "  - name: p", "    timeout: 1h", "    commands:"]
    lines += [f"      - {{name: c{i}, run: [\"true\"], timeout: 60s}}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@task(name="bare-command", cache_policy=NO_CACHE, persist_result=False)
def bare_task(argv: list[str]) -> int:
    return subprocess.run(argv, check=False).returncode


@task(name="bare-runner-command", cache_policy=NO_CACHE, persist_result=False)
def bare_runner_task(argv: list[str], log_path: str) -> int:
    """A bare Prefect task running the command through grd's runner as grd calls it (no budget/progress)."""
    from grd_blocks.process import run_command

    outcome = run_command(argv, env=_ENV, log_path=log_path, deadline=time.monotonic() + 60,
                          cancel=_CANCEL, on_line=lambda stream, line: None)
    return outcome.returncode if outcome.returncode is not None else -1


@flow(name="bench-bare")
def bare_flow(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        bare_task(ARGV)
        times.append(time.perf_counter() - t0)
    return times


@flow(name="bench-overhead")
def alternating_flow(spec_path: str, n: int, block: int, store: str, logs: str) -> dict[str, list[float]]:
    """Alternate blocks of bare tasks and grd commands; return per-command times and per-block means."""
    spec = load_spec(spec_path)
    opened = open_store(store, "bench-overhead")
    run = BenchmarkRun(spec=spec, run_key="bench-overhead", logs_dir=Path(logs), store=opened.access,
                       progress_root=opened.progress, command_prefixes=opened.commands)
    out: dict[str, list[float]] = {k: [] for k in ("bare", "grd", "runner", "bare_block", "grd_block")}
    commands = run.plan.phases[0].commands
    runner = PrefectRunner(run.run_key)
    phase_run = run.begin_phase(run.plan.phases[0])

    def start(command: PlannedCommand) -> CommandReport:
        t0 = time.perf_counter()
        plan = run.dispatch(phase_run, command)  # as the engine's _command does
        seen = run.watch(plan)
        row = run.judge(plan, seen, runner.command(plan, None))
        run.record(command.phase, row)
        out["grd"].append(time.perf_counter() - t0)
        return row

    def bare_block(count: int) -> None:
        t0 = time.perf_counter()
        for _ in range(count):
            t1 = time.perf_counter()
            bare_task(ARGV)
            out["bare"].append(time.perf_counter() - t1)
        out["bare_block"].append((time.perf_counter() - t0) / count)

    def runner_block(count: int) -> None:
        for _ in range(count):
            t1 = time.perf_counter()
            bare_runner_task(ARGV, f"{logs}/runner.log")
            out["runner"].append(time.perf_counter() - t1)

    def grd_block(chunk: tuple[PlannedCommand, ...]) -> None:
        t0 = time.perf_counter()
        rows = run_commands(chunk, start=start, gate=phase_run.gate, on_interrupt=lambda: run.stop("bench"),
                            reuse=lambda c: run.reusable("p", c.name),
                            done=lambda c, row: run.observe(phase_run, c, row))
        out["grd_block"].append((time.perf_counter() - t0) / len(chunk))
        bad = [r for r in rows if r.status.value != "COMPLETED"]
        assert not bad, bad[:1]

    for index, first in enumerate(range(0, n, block)):
        chunk = commands[first:first + block]
        sides: list[Callable[[], None]] = [partial(bare_block, len(chunk)), partial(grd_block, chunk),
                                           partial(runner_block, len(chunk))]
        for side in sides[index % 3:] + sides[:index % 3]:
            side()
    t0 = time.perf_counter()
    run.close()  # the one flush a phase makes at its end (progress snapshots went on in the background)
    out["grd_final_flush_per_command"] = [(time.perf_counter() - t0) / n]
    return out


def _components(n: int, logs: Path) -> dict[str, Any]:
    """subprocess.run vs run_command on ``true`` in each containment mode this host offers, interleaved (one
    of each, in turn), in this process, no Prefect task around them; the goal is at most 2x."""
    from grd_blocks.process import keepers, run_command

    env = dict(os.environ)
    out: dict[str, Any] = {"commands": n, "target_ratio": 2.0}
    for mode in keepers.MODES:
        os.environ[keepers.CONTAINMENT_ENV] = mode
        bare: list[float] = []
        grd: list[float] = []
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                subprocess.run(ARGV, check=False)
                bare.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                outcome = run_command(ARGV, env=env, log_path=logs / "component.log",
                                      deadline=time.monotonic() + 60)
                grd.append(time.perf_counter() - t0)
                if outcome.containment != mode:
                    raise RuntimeError(f"asked for {mode}, ran in {outcome.containment}")
        except Exception as exc:  # a mode this host cannot give: said so in the results, not measured
            out[mode] = {"unavailable": str(exc)}
            continue
        finally:
            os.environ.pop(keepers.CONTAINMENT_ENV, None)
        ratio = round(statistics.median(grd) / statistics.median(bare), 2)
        out[mode] = {"subprocess_run": _stats(bare), "run_command": _stats(grd),
                     "extra_median_ms": round(_median_ms(grd) - _median_ms(bare), 3), "ratio_median": ratio,
                     "meets_target": ratio <= 2.0}
    return out


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


def _p90_ms(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)] * 1000, 3)


def _stats(values: list[float]) -> dict[str, float]:
    return {"median_ms": _median_ms(values), "p90_ms": _p90_ms(values)}


def _task_runs_recorded() -> int:
    """How many task runs the server has recorded (its recorder works through events after the flow ends)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return int(client._client.post("/task_runs/count", json={}).json())


def _settle(expected: int, bound_s: float = 600.0) -> float:
    """Poll until the server has recorded ``expected`` task runs, so that the next side starts on a server
    with no backlog of the previous one's; the seconds it took (a bound passed: a RuntimeError)."""
    started = time.perf_counter()
    while _task_runs_recorded() < expected:
        if time.perf_counter() - started > bound_s:
            raise RuntimeError(f"the server recorded fewer than {expected} task runs within {bound_s:.0f} s")
        time.sleep(0.5)  # a poll of the server's count, not a guess at how long it needs
    return round(time.perf_counter() - started, 2)


def _big(n: int, tmpdir: Path, *, rounds: int) -> dict[str, Any]:
    """``n`` commands as one grd benchmark flow and as one bare Prefect flow of ``n`` tasks, alternating
    ``rounds`` times, each side started only once the server recorded every task run of the one before."""
    spec = str(_spec(tmpdir / "big.yaml", n))
    walls: dict[str, list[float]] = {"bare": [], "grd": []}
    settled: list[float] = []
    expected = _task_runs_recorded()
    status = "COMPLETED"
    for index in range(rounds):
        for side in ("bare", "grd") if index % 2 == 0 else ("grd", "bare"):
            t0 = time.perf_counter()
            if side == "bare":
                bare_flow(n)
                walls["bare"].append(time.perf_counter() - t0)
            else:
                wall, report = _run_benchmark(spec, tmpdir / f"ckpt-big-{index}",
                                              tmpdir / f"big-{index}.json")
                walls["grd"].append(wall)
                status = report.status.value if report.status.value != "COMPLETED" else status
            expected += n
            settled.append(_settle(expected))
    grd, bare = statistics.median(walls["grd"]), statistics.median(walls["bare"])
    return {
        "commands": n,
        "rounds": rounds,
        "status": status,
        "grd_benchmark_flow_walls_s": [round(w, 2) for w in walls["grd"]],
        "bare_prefect_flow_walls_s": [round(w, 2) for w in walls["bare"]],
        "server_settle_s": settled,
        "ratio_of_medians": round(grd / bare, 2),
        "grd_per_command_ms": round(grd / n * 1000, 2),
        "bare_per_command_ms": round(bare / n * 1000, 2),
        "target_ratio": 1.1,
    }


def _run_benchmark(spec: str, store: Path, report: Path) -> tuple[float, BenchmarkReport]:
    for attempt in range(3):  # the SQLite-backed test server may answer 503 while it catches up
        try:
            t0 = time.perf_counter()
            state = benchmark(spec_path=spec, run_key=f"bench-big-{attempt}", store=str(store),
                              report_path=str(report), return_state=True)
            wall = time.perf_counter() - t0
            return wall, BenchmarkReport.model_validate(state.result(raise_on_failure=False))
        except PrefectHTTPStatusError as exc:
            print(f"server busy ({exc}); retrying in 15 s", file=sys.stderr)
            time.sleep(15)
    raise RuntimeError("the Prefect test server stayed unavailable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--commands", type=int, help="commands per side (default 200; --quick 50)")
    parser.add_argument("--block", type=int, default=20, help="commands per alternating block")
    parser.add_argument("--runs", type=int, default=5, help="alternating runs (their medians and spread)")
    parser.add_argument("--big-rounds", type=int, default=2, help="alternating rounds of the big benchmark")
    parser.add_argument("--big", type=int, help="commands in the benchmark run (default 1000; --quick 200)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.json"))
    args = parser.parse_args()
    n = args.commands or (50 if args.quick else 200)
    big = args.big if args.big is not None else (200 if args.quick else 1000)
    out: dict[str, Any] = {"host": platform.node(), "date": time.strftime("%Y-%m-%d"),
                           "python": platform.python_version(), "quick": args.quick,
                           "cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        tmpdir = Path(tmp)
        alternating_flow(str(_spec(tmpdir / "warm.yaml", 10)), 10, 5, str(tmpdir / "ckpt-warm"),
                         str(tmpdir / "logs-warm"))  # warm both paths (imports, first task, store)
        runs: list[dict[str, list[float]]] = []
        for index in range(args.runs):  # each run its own flow and run key, the sides interleaved in each
            runs.append(alternating_flow(str(_spec(tmpdir / f"small-{index}.yaml", n)), n, args.block,
                                         str(tmpdir / f"ckpt-{index}"), str(tmpdir / f"logs-{index}")))
        times = {key: [value for run in runs for value in run[key]] for key in runs[0]}
        bare, grd = times["bare"], times["grd"]
        per_run = [round(_median_ms(run["grd"]) - _median_ms(run["bare"]), 3) for run in runs]
        per_run_scheduled = [round(_median_ms(run["grd_block"]) + 1000 * run["grd_final_flush_per_command"][0]
                                   - _median_ms(run["bare_block"]), 3)
                             for run in runs]
        flush_ms = statistics.median(1000 * run["grd_final_flush_per_command"][0] for run in runs)
        out["per_command"] = {
            "runs": args.runs,
            "overhead_median_ms_per_run": per_run,
            "overhead_with_scheduling_ms_per_run": per_run_scheduled,
            "overhead_median_of_runs_ms": round(statistics.median(per_run), 3),
            "overhead_spread_ms": [min(per_run), max(per_run)],
            "commands_per_side": n,
            "block": args.block,
            "command": " ".join(ARGV),
            "bare_prefect_task": {**_stats(bare), "mean_with_scheduling_ms": _median_ms(times["bare_block"])},
            "grd_command_task": {**_stats(grd), "mean_with_scheduling_ms": round(
                _median_ms(times["grd_block"]) + flush_ms, 3)},
            "grd_final_flush_per_command_ms": round(flush_ms, 3),
            "bare_prefect_task_with_grd_runner": _stats(times["runner"]),
            "overhead_median_ms": round(_median_ms(grd) - _median_ms(bare), 3),
            "of_which_runner_median_ms": round(_median_ms(times["runner"]) - _median_ms(bare), 3),
            "of_which_orchestration_median_ms": round(_median_ms(grd) - _median_ms(times["runner"]), 3),
            "overhead_p90_ms": round(_p90_ms(grd) - _p90_ms(bare), 3),
            "overhead_with_scheduling_ms": round(
                _median_ms(times["grd_block"]) + flush_ms - _median_ms(times["bare_block"]), 3),
            "ratio_median": round(statistics.median(grd) / statistics.median(bare), 2),
            "target_overhead_ms": TARGET_MS,
        }
        out["per_command"]["meets_target"] = (
            statistics.median(per_run) <= TARGET_MS and statistics.median(per_run_scheduled) <= TARGET_MS)
        out["components"] = _components(n, tmpdir / "logs")
        if big:
            out["benchmark"] = _big(big, tmpdir, rounds=args.big_rounds)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    target = Path(args.out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0 if not big or out["benchmark"]["status"] == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
