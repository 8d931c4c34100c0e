"""Where a grd benchmark flow's memory goes as its commands run: RSS at every eighth of a phase of ``n``
commands of ``true``, the highest RSS of each stage (spec parse, commands, end steps; sampled every 20 ms),
then after the run's last steps (the phase's report, the run's report, writing it,
publishing the results table), on a real `prefect server` (SQLite) started for each ``--ref``.

Each reference (``--ref`` names a checkout, default this one) runs in a fresh child process on a fresh
server: its flow process's RSS (``/proc/self/status``) is read through a wrapper on the run's ``record``
call (after each command's row is committed to progress) and on the end steps. "KB per command" is the RSS
growth between the first and the last eighth, divided by the commands between them: what the run holds per
command while it runs. One run each; the figures are noisy by a few MiB (allocator arenas). It also times
the steps of a command inside the flow (wall-clock, per command: the task's body, ``run_command`` and the
runner's own steps: taking a keeper, creating the log file, sending the start, waiting for the exit, giving
the keeper back). Prints JSON lines; writes nothing.

    python bench/bench_memory.py --n 4000 --ref /path/to/old/checkout --ref .   [--quick: 500 commands]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child(n: int, work: Path) -> dict[str, Any]:
    from bench_scale import _spec  # puts this checkout on the path, grd_blocks not imported yet

    spec = _spec(work / "spec.yaml", n, ["true"], 1)
    sys.path.insert(0, os.environ["GRD_BENCH_REF"])  # ahead of this checkout: the grd measured
    import grd_blocks.orchestration.benchmark as engine
    from grd_blocks.orchestration import run as run_module
    from grd_blocks.prefect_edge import benchmark_flow

    marks: dict[int, float] = {}
    steps: list[tuple[str, float, float]] = []
    record = run_module.BenchmarkRun.record
    recorded = [0]
    stage = ["before the flow"]
    peaks = _sample_peaks(stage)

    def counting(self: Any, phase: str, row: Any) -> None:
        record(self, phase, row)
        recorded[0] += 1
        stage[0] = "commands"
        if recorded[0] % max(1, n // 8) == 0:
            marks[recorded[0]] = _status_mb("VmRSS")

    parts = _time_parts(benchmark_flow)
    load_spec = vars(benchmark_flow)["load_spec"]

    def loading(path: Any) -> Any:
        stage[0] = "spec parse"
        try:
            return load_spec(path)
        finally:
            stage[0] = "after the spec, before the first command"

    setattr(benchmark_flow, "load_spec", loading)  # noqa: B010  (the module re-exports nothing)
    run_module.BenchmarkRun.record = counting  # type: ignore[method-assign]
    for owner, name in ((run_module.BenchmarkRun, "phase_report"), (run_module.BenchmarkRun, "report"),
                        (engine, "write_report"), (benchmark_flow, "publish_results")):
        _wrap(owner, name, functools.partial(_rss_after, steps, name))
    started = time.perf_counter()
    benchmark_flow.benchmark(spec_path=str(spec), run_key="scale", store=str(work / "ckpt"),
                             report_path=str(work / "report.json"), return_state=True)
    stage[0] = "end steps"
    counts = sorted(marks)
    first, last = counts[0], counts[-1]
    return {"commands": n, "wall_s": round(time.perf_counter() - started, 1), "rss_mb_at": marks,
            "kb_per_command": round((marks[last] - marks[first]) * 1024 / (last - first), 2),
            "after_step_rss_hwm_mb": steps, "peak_rss_mb": _status_mb("VmHWM"),
            "peak_rss_mb_by_stage": dict(peaks),
            "ms_per_command_in": {name: round(total / max(1, calls) * 1000, 3)
                                  for name, (total, calls) in parts.items()}}


def _time_parts(benchmark_flow: Any) -> dict[str, tuple[float, int]]:
    """Wrap the steps a command takes inside the flow with wall-clock timers: the engine's call of the task
    (``execute``), the runner (``run_command``) and the runner's own steps, from taking a keeper to giving
    it back. Returns the live totals: step -> (seconds, calls)."""
    import grd_blocks.orchestration.execute as execute
    from grd_blocks.process import keepers, output, runner

    totals: dict[str, tuple[float, int]] = {}

    def add(label: str, seconds: float) -> None:
        total, calls = totals.get(label, (0.0, 0))
        totals[label] = (total + seconds, calls + 1)

    for owner, name, label in (
        (benchmark_flow, "execute", "execute (the task's body)"),
        (execute, "run_command", "run_command"),
        (keepers, "acquire", "take a ready keeper"),
        (output._LogFile, "__init__", "create the log file"),
        (output.OutputCapture, "__init__", "output capture (log file, pty, pipes)"),
        (keepers.Keeper, "start", "send the start to the keeper"),
        (runner._Supervised, "_wait", "wait for the exit"),
        (keepers, "give_back", "give the keeper back"),
    ):
        _wrap(owner, name, functools.partial(add, label))
    return totals


def _sample_peaks(stage: list[str]) -> dict[str, float]:
    """The highest VmRSS seen in each stage (``stage[0]`` names the current one), sampled every 20 ms by a
    daemon thread: a stage's transient peaks, which the marks at command counts miss."""
    peaks: dict[str, float] = {}

    def sample() -> None:
        while True:
            now, rss = stage[0], _status_mb("VmRSS")
            peaks[now] = max(peaks.get(now, 0.0), rss)
            time.sleep(0.02)

    threading.Thread(target=sample, name="rss-sampler", daemon=True).start()
    return peaks


def _rss_after(steps: list[tuple[str, float, float]], name: str, _seconds: float) -> None:
    steps.append((name, _status_mb("VmRSS"), _status_mb("VmHWM")))


def _wrap(owner: Any, name: str, after: Callable[[float], None]) -> None:
    """Replace ``owner.name`` by a call of it that then calls ``after`` with the seconds it took."""
    inner = getattr(owner, name)

    def measured(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            after(time.perf_counter() - began)

    setattr(owner, name, measured)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--ref", action="append", help="a checkout of grd to measure (default: this one)")
    parser.add_argument("--quick", action="store_true", help="500 commands (make bench's short variant)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.n = 500
    if args.child:
        print(json.dumps(child(args.n, Path(args.child))), flush=True)
        return 0
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.prefect_server import running_server

    for ref in args.ref or [str(ROOT)]:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            home.mkdir()
            with running_server(home) as server:
                env = {**os.environ, **server.env, "GRD_BENCH_REF": str(Path(ref).resolve())}
                done = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--child", tmp], env=env,
                                      cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False)
                found = [line for line in done.stdout.splitlines() if line.startswith("{")]
                if done.returncode != 0 or not found:
                    print(f"{ref}: exited {done.returncode}: {done.stderr[-2000:]}", file=sys.stderr)
                    return 1
                print(json.dumps({"ref": ref, **json.loads(found[-1])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
