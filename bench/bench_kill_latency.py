"""How late is the whole process tree gone after its deadline, and does anything survive?

Random 3-level trees of 7 processes (root -> 2 children -> 2 grandchildren each), drawn from four families:
plain, with escapes (``setsid`` children, double-forked ``setsid`` daemons), with SIGTERM-ignoring members,
and both. Each tree runs under: grd's SIGKILL path (grace 0) and TERM path (grace ``--grace``), GNU ``timeout
-s KILL`` / ``timeout -k GRACE``, and a Prefect task with ``timeout_seconds`` running the tree via
``subprocess`` (fewer trials; ephemeral API). Latency = the moment every recorded pid is gone (checked
independently in /proc, every 1 ms) minus the deadline. Survivors are counted 0.5 s after ``deadline + grace``
(or after the runner returned, if later) and then killed.

    .venv/bin/python bench/bench_kill_latency.py [--quick] [--trials N] [--prefect-trials N] [--grace S]

Writes bench/results/kill_latency.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grd_blocks.process import run_command  # noqa: E402
from grd_blocks.process.keepers import FORCE_FALLBACK_ENV  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "kill_latency.json"
TREE_SIZE = 7
FAMILIES = ("plain", "escapes", "ignore_term", "escapes+ignore_term")


# --- trees ----------------------------------------------------------------------------------------------


def tree_script(pids: Path, rng: random.Random, family: str) -> str:
    """A /bin/sh script that builds one random 7-process tree; every node appends its pid to ``pids``."""
    escapes = "escapes" in family
    ignoring = "ignore_term" in family

    def node(level: int) -> str:
        parts = []
        if ignoring and rng.random() < 0.5:
            parts.append("trap '' TERM")  # inherited by exec'd sleep: it ignores SIGTERM too
        parts.append(f"echo $$ >> {shlex.quote(str(pids))}")
        if level < 2:
            for _ in range(2):
                child = "sh -c " + shlex.quote(node(level + 1))
                escape = rng.choice(("none", "setsid", "daemon")) if escapes else "none"
                if escape == "setsid":
                    parts.append(f"setsid {child} &")
                elif escape == "daemon":
                    parts.append(f"( setsid {child} & )")  # double fork: the subshell exits at once
                else:
                    parts.append(f"{child} &")
        parts.append("exec sleep 1000")
        return "\n".join(parts)

    return node(0)


def read_pids(pids: Path) -> list[int]:
    try:
        return [int(line) for line in pids.read_text().split()]
    except (OSError, ValueError):
        return []


def running(pid: int) -> bool:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def reap_our_zombies(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def settle(pids_file: Path, deadline: float, grace: float) -> dict[str, Any]:
    """Poll /proc until every pid is gone (bounded); then count survivors and kill them."""
    pids = read_pids(pids_file)
    end = max(time.monotonic(), deadline + grace) + 0.5
    gone_at: float | None = None
    while True:
        now = time.monotonic()
        if not any(running(pid) for pid in pids):
            gone_at = now
            break
        if now > end:
            break
        time.sleep(0.001)
        pids = read_pids(pids_file)
    survivors = [pid for pid in pids if running(pid)]
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if survivors:
        time.sleep(0.01)
        reap_our_zombies(survivors)
    return {
        "complete": len(pids) == TREE_SIZE,
        "latency_ms": None if gone_at is None else (gone_at - deadline) * 1000,
        "survivors": len(survivors),
    }


# --- runners --------------------------------------------------------------------------------------------


def run_grd(script: str, pids: Path, setup: float, grace: float) -> dict[str, Any]:
    t0 = time.monotonic()
    deadline = t0 + setup
    outcome = run_command(script, deadline=deadline, grace_s=grace, tail_chars=0)
    result = settle(pids, deadline, grace)
    result["reported_survivors"] = outcome.survivors
    result["containment"] = outcome.containment
    return result


def run_timeout(script: str, pids: Path, setup: float, grace: float) -> dict[str, Any]:
    if grace > 0:
        argv = ["timeout", "-k", f"{grace}", f"{setup}", "/bin/sh", "-c", script]
    else:
        argv = ["timeout", "-s", "KILL", f"{setup}", "/bin/sh", "-c", script]
    t0 = time.monotonic()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return settle(pids, t0 + setup, grace)


def series(
    name: str,
    runner: Callable[[str, Path, float, float], dict[str, Any]],
    trees: list[tuple[str, str]],
    workdir: Path,
    setup: float,
    grace: float,
) -> dict[str, Any]:
    rows = []
    key = f"s{len(list(workdir.iterdir()))}-{time.monotonic_ns()}"
    for i, (family, script_template) in enumerate(trees):
        pids = workdir / f"{key}-{i}.pids"
        script = script_template.replace("@PIDS@", str(pids))
        row = runner(script, pids, setup, grace)
        row["family"] = family
        rows.append(row)
        pids.unlink(missing_ok=True)
    return summarize(name, rows, grace)


def summarize(name: str, rows: list[dict[str, Any]], grace: float) -> dict[str, Any]:
    complete = [r for r in rows if r["complete"]]
    lat = sorted(r["latency_ms"] for r in complete if r["latency_ms"] is not None)
    by_family = {}
    for family in FAMILIES:
        fam = [r for r in complete if r["family"] == family]
        if fam:
            by_family[family] = {
                "trials": len(fam),
                "trees_with_survivors": sum(1 for r in fam if r["survivors"]),
                "survivors": sum(r["survivors"] for r in fam),
            }
    return {
        "name": name,
        "grace_s": grace,
        "trials": len(rows),
        "incomplete_trees": len(rows) - len(complete),
        "trees_fully_gone": len(lat),
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "max_ms": max(lat) if lat else None,
        "mean_ms": statistics.fmean(lat) if lat else None,
        "survivors": sum(r["survivors"] for r in complete),
        "trees_with_survivors": sum(1 for r in complete if r["survivors"]),
        "grd_reported_survivors": sum(r.get("reported_survivors", 0) for r in complete),
        "by_family": by_family,
        "containment": sorted({r["containment"] for r in rows if "containment" in r}),
    }


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    k = max(0, min(len(values) - 1, round(q / 100 * (len(values) - 1))))
    return values[k]


def prefect_series(trees: list[tuple[str, str]], workdir: Path, setup: float) -> dict[str, Any]:
    """A Prefect task with timeout_seconds=setup runs the tree via subprocess.run (what users write)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.getLogger("prefect").setLevel(logging.ERROR)
    from prefect import flow, task
    from prefect.testing.utilities import prefect_test_harness

    started: dict[str, float] = {}

    @task(timeout_seconds=setup)
    def run_tree(script: str) -> None:
        started["t"] = time.monotonic()
        subprocess.run(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    @flow(log_prints=False)
    def tree_flow(script: str) -> str:
        try:
            run_tree(script)
        except Exception as exc:  # the TimeoutError Prefect raises is the expected outcome
            return type(exc).__name__
        return "completed"

    rows = []
    with prefect_test_harness(server_startup_timeout=120):
        for i, (family, template) in enumerate(trees):
            pids = workdir / f"prefect-{i}.pids"
            script = template.replace("@PIDS@", str(pids))
            started.clear()
            state = tree_flow(script)
            returned = time.monotonic()
            deadline = started.get("t", returned) + setup
            row = settle(pids, deadline, 0.0)
            row.update(family=family, returned_late_ms=(returned - deadline) * 1000, result=state)
            rows.append(row)
    summary = summarize("prefect task timeout_seconds + subprocess.run", rows, 0.0)
    late = sorted(r["returned_late_ms"] for r in rows)
    summary["flow_returned_late_p50_ms"] = pct(late, 50)
    summary["flow_returned_late_p99_ms"] = pct(late, 99)
    summary["results"] = sorted({r["result"] for r in rows})
    return summary


# --- main -----------------------------------------------------------------------------------------------


def bare_spawn_overhead(n: int) -> dict[str, float]:
    """Per-command cost of `true`: bare subprocess vs run_command (no deadline), median ms."""

    def once(fn: Callable[[], object]) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1000

    def bare() -> object:
        return subprocess.run(["true"])

    def grd_list() -> object:
        return run_command(["true"])

    def grd_shell() -> object:
        return run_command("true")

    samples: dict[str, list[float]] = {"bare": [], "list": [], "shell": []}
    for i in range(n + 10):  # interleaved, so load spikes hit all three alike; medians
        for key, fn in (("bare", bare), ("list", grd_list), ("shell", grd_shell)):
            value = once(fn)
            if i >= 10:
                samples[key].append(value)
    med = {key: statistics.median(values) for key, values in samples.items()}
    return {
        "bare_ms": med["bare"],
        "grd_list_ms": med["list"],
        "grd_shell_ms": med["shell"],
        "overhead_list_ms": med["list"] - med["bare"],
        "overhead_shell_ms": med["shell"] - med["bare"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="40 trees, 5 Prefect trials")
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--prefect-trials", type=int, default=30)
    parser.add_argument("--fallback-trials", type=int, default=100)
    parser.add_argument("--grace", type=float, default=0.2, help="TERM-path grace in seconds")
    parser.add_argument("--setup", type=float, default=0.25, help="deadline after start; trees build in this")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-prefect", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.prefect_trials, args.fallback_trials = 40, 5, 20
    logging.basicConfig(level=logging.ERROR)

    rng = random.Random(args.seed)
    trees = [(fam, tree_script(Path("@PIDS@"), rng, fam)) for fam in (FAMILIES * args.trials)[: args.trials]]
    rng.shuffle(trees)
    results: dict[str, Any] = {
        "benchmark": "kill_latency",
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "config": vars(args),
        "note": "latency = all pids gone minus the deadline; survivors counted 0.5s after deadline+grace",
    }
    os.environ.pop(FORCE_FALLBACK_ENV, None)
    with tempfile.TemporaryDirectory(prefix="grd-bench-") as tmp:
        work = Path(tmp)
        results["spawn_overhead"] = bare_spawn_overhead(50 if args.quick else 300)
        series_list = []
        for name, runner, grace in (
            ("grd SIGKILL path (grace 0)", run_grd, 0.0),
            (f"grd TERM path (grace {args.grace}s)", run_grd, args.grace),
            ("GNU timeout -s KILL", run_timeout, 0.0),
            (f"GNU timeout -k {args.grace}", run_timeout, args.grace),
        ):
            print(f"running {name} on {len(trees)} trees ...", flush=True)
            series_list.append(series(name, runner, trees, work, args.setup, grace))
        if not args.no_prefect and args.prefect_trials > 0:
            print(f"running prefect on {args.prefect_trials} trees ...", flush=True)
            try:
                series_list.append(prefect_series(trees[: args.prefect_trials], work, args.setup))
            except Exception as exc:  # report, don't hide: the other numbers are still valid
                series_list.append({"name": "prefect", "error": repr(exc)})
        # The fallback last: it makes this process a subreaper for the rest of its life.
        os.environ[FORCE_FALLBACK_ENV] = "1"
        sub = trees[: args.fallback_trials]
        for name, grace in (
            ("grd fallback SIGKILL path (grace 0)", 0.0),
            (f"grd fallback TERM path (grace {args.grace}s)", args.grace),
        ):
            print(f"running {name} on {len(sub)} trees ...", flush=True)
            series_list.append(series(name, run_grd, sub, work, args.setup, grace))
        os.environ.pop(FORCE_FALLBACK_ENV, None)
    results["series"] = series_list
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [
        "| runner | trials | p50 late (ms) | p99 late (ms) | trees fully gone | survivors (trees) |",
        "|---|---|---|---|---|---|",
    ]
    for s in results["series"]:
        if "error" in s:
            lines.append(f"| {s['name']} | error: {s['error']} | | | | |")
            continue
        lines.append(
            f"| {s['name']} | {s['trials'] - s['incomplete_trees']} | {f(s['p50_ms'])} | {f(s['p99_ms'])} | "
            f"{s['trees_fully_gone']} | {s['survivors']} ({s['trees_with_survivors']}) |"
        )
    o = results["spawn_overhead"]
    lines.append("")
    lines.append(
        f"Per-command cost of `true`: bare subprocess {o['bare_ms']:.2f} ms, run_command list "
        f"{o['grd_list_ms']:.2f} ms (+{o['overhead_list_ms']:.2f}), shell string {o['grd_shell_ms']:.2f} ms "
        f"(+{o['overhead_shell_ms']:.2f})."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
