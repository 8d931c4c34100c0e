"""The training helpers stopped by a phase budget, N times at load ~2: how often is it exit 124 (saved,
TIMEOUT), and is it ever SIGKILL? Before/after the fast-exit change, side by side.

Each trial runs ``examples/train_mlp.py`` (an MLP on CPU, ``ResumableTraining``, a checkpoint every epoch of
16 steps, ``--step-delay`` of busy work per step so an epoch takes about a second) under grd's ``run_command``
with a deadline = a phase budget drawn at random in [``--min-budget``, ``--max-budget``] s (so stops land at
different moments of an epoch; every variant of a trial gets the same budget), grace 5 s, and the environment
grd gives a command (``command_env``: ``GRD_TIME_LEFT_S``, ``GRD_RUN_KEY``, ``GRD_CHECKPOINT_URL`` in a fresh
store per trial, ...), plus ``OMP_NUM_THREADS=1``. The budget includes the interpreter's start and torch's
import, as it does under grd. Variants, in a random order per trial:

* ``after``: the current helpers (``GRD_RUN_KEY`` set: exit allowance ``GRD_EXIT_S`` default, SIGTERM absorbed
  once saved, ``exit_now``).
* ``before``: the old behaviour: no ``GRD_RUN_KEY`` (no absorb, no fast-exit hook), ``GRD_EXIT_S=0``, and the
  process leaving through the interpreter (``bench/_train_mlp_sys_exit.py``: ``sys.exit(main())``).
* ``after_warn`` (unless ``--no-warn``): ``after`` with ``warn: USR1 before 2s`` (``run_command(warn=...)``,
  ``GRD_WARN_SIGNAL=SIGUSR1``, ``GRD_WARN_S=2``).

Per trial: returncode, timed_out, whether a checkpoint was committed (the store's newest checkpoint, read with
the library's own ``newest``, and its reason), the steps finished (``--steps-log``) minus the steps saved,
when the process ended relative to its deadline, and the 1-minute load average. ``--load-procs`` busy-loop
processes (started here, killed by pid at the end) keep the host at load ~2 with the trainer itself.
Reported per variant: counts of 124 / -15 / -9 / other and the share of 124; target for ``after``: >= 95 %
124 and no -9.

    .venv/bin/python bench/bench_training_stop.py [--quick] [--trials N] [--load-procs N] [--no-warn]
        [--out PATH]

Writes bench/results/training_stop.json (``--out``). ``--quick``: 10 trials.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grd_blocks.checkpoint import RunCheckpoints  # noqa: E402
from grd_blocks.orchestration.environment import StoreAccess, command_env  # noqa: E402
from grd_blocks.process import DeadlineWarning, run_command  # noqa: E402
from grd_blocks.training.resume import newest  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "training_stop.json"
GRACE_S = 5.0
WARN_S = 2.0
TARGET_SHARE = 0.95
SCRIPTS = {"after": ROOT / "examples" / "train_mlp.py", "before": ROOT / "bench" / "_train_mlp_sys_exit.py",
           "after_warn": ROOT / "examples" / "train_mlp.py"}
LOAD_MARK = "grd-bench-training-stop-load"  # in the load generators' command line


def start_load(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` busy-loop processes (stopped by ``stop_load``, by pid)."""
    code = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", code, LOAD_MARK]) for _ in range(count)]


def stop_load(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def saved(url: str) -> tuple[int | None, str | None]:
    """The global step and reason of the store's newest committed checkpoint (None, None if none)."""
    found = newest(RunCheckpoints.from_url(url))
    if found is None:
        return None, None
    ref = found[1]
    return int(ref.metadata.get("global_step", ref.index)), ref.metadata.get("reason")


def last_step(steps_log: Path) -> int:
    try:
        lines = steps_log.read_text().split()
    except OSError:
        return 0
    return int(lines[-1]) if lines else 0


def trial(variant: str, index: int, budget: float, work: Path, step_delay: float,
          epochs: int = 100_000) -> dict[str, Any]:
    run_key = f"stop-{variant}-{index}" if index >= 0 else "warmup"
    store = StoreAccess(url=str(work / run_key))
    warn = variant == "after_warn"
    env = command_env(spec_env={"OMP_NUM_THREADS": "1"}, run_key=run_key, attempt=1, time_left_s=budget,
                      grace_s=GRACE_S, phase="train", command="mlp", store=store,
                      warn_s=WARN_S if warn else None, warn_signal=signal.SIGUSR1 if warn else None)
    if variant == "before":
        del env["GRD_RUN_KEY"]
        env["GRD_EXIT_S"] = "0"
    url = env["GRD_CHECKPOINT_URL"]
    steps_log = work / f"{run_key}.steps"
    argv = [sys.executable, str(SCRIPTS[variant]), "--epochs", str(epochs), "--step-delay", str(step_delay),
            "--steps-log", str(steps_log)]
    load = os.getloadavg()[0]
    started = time.monotonic()
    training_at: list[float] = []

    def on_line(stream: str, line: str) -> None:
        if stream == "stdout" and line.startswith("starting at epoch") and not training_at:
            training_at.append(time.monotonic() - started)  # imports done, resumed, handlers installed

    outcome = run_command(argv, deadline=started + budget, grace_s=GRACE_S, env=env, on_line=on_line,
                          log_path=work / f"{run_key}.log", tail_chars=600,
                          warn=DeadlineWarning(signal.SIGUSR1, WARN_S) if warn else None)
    step, reason = saved(url)
    done = last_step(steps_log)
    return {
        "variant": variant,
        "trial": index,
        "budget_s": round(budget, 3),
        "returncode": outcome.returncode,
        "timed_out": outcome.timed_out,
        "ended_vs_deadline_s": round(outcome.elapsed_s - budget, 3),
        "training_started_s": round(training_at[0], 3) if training_at else None,
        "term_sent_s": outcome.term_sent_s,
        "kill_sent_s": outcome.kill_sent_s,
        "warn_sent_s": outcome.warn_sent_s,
        "committed": step is not None,
        "saved_step": step,
        "saved_reason": reason,
        "steps_done": done,
        "steps_lost": None if step is None else done - step,
        "load_1m": load,
        "stderr_tail": outcome.stderr_tail[-300:],
    }


def bucket(code: int | None) -> str:
    return {124: "124", -15: "-15", -9: "-9"}.get(code if code is not None else 0, "other")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    codes = Counter(bucket(r["returncode"]) for r in rows)
    ended = sorted(r["ended_vs_deadline_s"] for r in rows)
    lost = [r["steps_lost"] for r in rows if r["steps_lost"] is not None]
    n = len(rows)
    started = [r for r in rows if r["training_started_s"] is not None]
    begun = sorted(r["training_started_s"] for r in started)
    return {
        "trials": n,
        "training_started": len(started),
        "training_started_s": {"min": begun[0], "median": statistics.median(begun), "max": begun[-1]}
        if begun else None,
        "share_124_of_started": sum(1 for r in started if r["returncode"] == 124) / len(started)
        if started else None,
        "counts": {key: codes.get(key, 0) for key in ("124", "-15", "-9", "other")},
        "returncodes": dict(Counter(str(r["returncode"]) for r in rows)),
        "share_124": codes.get("124", 0) / n if n else None,
        "sigkilled": codes.get("-9", 0),
        "timed_out": sum(1 for r in rows if r["timed_out"]),
        "committed": sum(1 for r in rows if r["committed"]),
        "saved_reasons": dict(Counter(str(r["saved_reason"]) for r in rows)),
        "steps_lost_max": max(lost) if lost else None,
        "ended_vs_deadline_s": {"min": ended[0], "median": statistics.median(ended), "max": ended[-1]}
        if ended else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 trials")
    parser.add_argument("--trials", type=int, default=100, help="trials per variant")
    parser.add_argument("--min-budget", type=float, default=3.0)
    parser.add_argument("--max-budget", type=float, default=8.0)
    parser.add_argument("--step-delay", type=float, default=0.05, help="busy seconds per step (16 per epoch)")
    parser.add_argument("--load-procs", type=int, default=1, help="busy-loop processes besides the trainer")
    parser.add_argument("--no-warn", action="store_true", help="skip the after_warn variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.trials = 10
    variants = ["after", "before"] + ([] if args.no_warn else ["after_warn"])
    rng = random.Random(args.seed)
    results: dict[str, Any] = {
        "benchmark": "training_stop",
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "config": {**vars(args), "out": str(args.out), "grace_s": GRACE_S, "warn": f"USR1 before {WARN_S}s"},
        "loadavg_before": os.getloadavg(),
    }
    rows: list[dict[str, Any]] = []
    load = start_load(args.load_procs)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="grd-bench-stop-") as tmp:
            warm = trial("after", -1, 600.0, Path(tmp), args.step_delay, epochs=0)  # page cache, pyc
            results["warmup"] = {k: warm[k] for k in ("returncode", "training_started_s")}
            results["warmup"]["wall_s"] = round(600.0 + warm["ended_vs_deadline_s"], 3)
            for index in range(args.trials):
                budget = rng.uniform(args.min_budget, args.max_budget)
                order = list(variants)
                rng.shuffle(order)
                for variant in order:
                    rows.append(trial(variant, index, budget, Path(tmp), args.step_delay))
                last = {r["variant"]: r["returncode"] for r in rows[-len(order):]}
                print(f"trial {index + 1}/{args.trials}: budget {budget:.1f}s, load "
                      f"{os.getloadavg()[0]:.2f}, returncodes {last}, {time.monotonic() - started:.0f}s",
                      flush=True)
    finally:
        stop_load(load)
    loads = [r["load_1m"] for r in rows]
    results["loadavg_after"] = os.getloadavg()
    results["load_1m_during"] = {"min": min(loads), "median": statistics.median(loads), "max": max(loads)}
    results["variants"] = {v: summarize([r for r in rows if r["variant"] == v]) for v in variants}
    after = results["variants"]["after"]
    results["meets_target"] = after["share_124"] >= TARGET_SHARE and after["sigkilled"] == 0
    results["trials"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")
    return 0


def markdown(results: dict[str, Any]) -> str:
    lines = ["| variant | trials | 124 | -15 | -9 | other | share 124 | training started (median s) | "
             "share 124 of started | committed | max steps lost | ended vs deadline s (min/median/max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in results["variants"].items():
        c, e, t = v["counts"], v["ended_vs_deadline_s"], v["training_started_s"]
        of_started = "-" if v["share_124_of_started"] is None else f"{v['share_124_of_started']:.0%}"
        lines.append(f"| {name} | {v['trials']} | {c['124']} | {c['-15']} | {c['-9']} | {c['other']} | "
                     f"{v['share_124']:.0%} | {v['training_started']} ({t['median'] if t else '-'}) | "
                     f"{of_started} | {v['committed']} | {v['steps_lost_max']} | "
                     f"{e['min']:+.2f} / {e['median']:+.2f} / {e['max']:+.2f} |")
    lo = results["load_1m_during"]
    lines.append("")
    lines.append(f"Warm-up (0 epochs, no deadline): {results['warmup']}")
    codes = "; ".join(f"{k} {v['returncodes']}" for k, v in results["variants"].items())
    lines.append(f"Return codes: {codes}")
    lines.append(f"Load (1 min) during {lo['min']:.2f}-{lo['max']:.2f}, median {lo['median']:.2f}. Target "
                 f"(after: >= {TARGET_SHARE:.0%} exit 124, no SIGKILL): "
                 f"{'met' if results['meets_target'] else 'NOT met'}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
