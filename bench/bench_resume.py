"""Steps lost per interruption kind, and time from a retry's start to its first new step.

Runs examples/train_mlp.py as real processes: each kind interrupts a run after a fixed number of logged steps,
then relaunches it. Baseline (same run, side by side): a script that only checkpoints each epoch and has no
graceful handling, killed at the same point (what SIGTERM does to a plain script), and a fresh start's time
to its first step. Writes bench/results/resume.json.

    .venv/bin/python bench/bench_resume.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_mlp.py"
COMMON = ["--epochs", "3", "--samples", "128", "--batch-size", "16", "--step-delay", "0.05"]  # 8 steps/epoch
INTERRUPT_AT = 13  # logged steps before the interruption: mid-epoch 2


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("GRD_TIME_LEFT_S", None)
    env.update(extra or {})
    return env


def _steps(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def _launch(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *COMMON, *args, "--steps-log", str(log)],
        env=_env(env),
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, started


def _wait_steps(proc: subprocess.Popen[str], log: Path, count: int) -> float:
    deadline = time.monotonic() + 120
    while len(_steps(log)) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            return time.perf_counter()
        time.sleep(0.005)
    return time.perf_counter()


def _trial(kind: str, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True)
    log, ck = work / "steps.log", str(work / "ck")
    args = ["--checkpoint-url", ck]
    env: dict[str, str] | None = None
    if kind == "sigkill":
        args += ["--save-every-steps", "5"]
    if kind == "deadline":
        env = {"GRD_TIME_LEFT_S": "3"}  # includes interpreter start-up; stops on its own
    proc, _ = _launch(args, log, env)
    if kind != "deadline":
        _wait_steps(proc, log, INTERRUPT_AT)
        os.killpg(
            proc.pid, {"sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL, "plain": signal.SIGKILL}[kind]
        )
    proc.communicate(timeout=120)
    done = len(_steps(log))
    retry, started = _launch(args, log)
    first_new = _wait_steps(retry, log, done + 1)
    out2, _ = retry.communicate(timeout=300)
    resumed = int(out2.split("(step ")[1].split(")")[0])
    return {
        "kind": kind,
        "returncode": proc.returncode,
        "steps_done": done,
        "resumed_at": resumed,
        "steps_lost": done - resumed,
        "retry_to_first_step_s": round(first_new - started, 3),
        "retry_ok": retry.returncode == 0,
    }


def _fresh_first_step(work: Path) -> float:
    work.mkdir(parents=True)
    log = work / "fresh.log"
    proc, started = _launch(["--checkpoint-url", str(work / "fresh")], log)
    first = _wait_steps(proc, log, 1)
    proc.communicate(timeout=300)
    return first - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one trial per kind instead of three")
    repeats = 1 if parser.parse_args().quick else 3
    results: dict[str, Any] = {
        "interrupt_after_steps": INTERRUPT_AT,
        "steps_per_epoch": 8,
        "repeats": repeats,
        "kinds": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        fresh = [_fresh_first_step(Path(tmp) / f"f{i}") for i in range(repeats)]
        baseline_first = statistics.median(fresh)
        plain = [_trial("plain", Path(tmp) / f"plain{i}") for i in range(repeats)]
        baseline_lost = statistics.median(t["steps_lost"] for t in plain)
        results["baseline"] = {
            "what": "epoch checkpoints only, killed without a graceful save",
            "trials": plain,
            "steps_lost_median": baseline_lost,
            "fresh_start_to_first_step_s": fresh,
        }
        for kind in ("sigterm", "deadline", "sigkill"):
            trials = [_trial(kind, Path(tmp) / f"{kind}{i}") for i in range(repeats)]
            lost = statistics.median(t["steps_lost"] for t in trials)
            first = statistics.median(t["retry_to_first_step_s"] for t in trials)
            results["kinds"][kind] = {
                "trials": trials,
                "steps_lost_median": lost,
                "baseline_steps_lost": baseline_lost,
                "retry_to_first_step_s_median": first,
                "fresh_start_to_first_step_s_median": baseline_first,
                "first_step_ratio_vs_fresh": round(first / baseline_first, 3) if baseline_first else None,
            }
            print(
                f"{kind:9s} lost {lost} steps (baseline {baseline_lost}); retry first step {first:.2f}s "
                f"(fresh start {baseline_first:.2f}s)",
                flush=True,
            )
    out = ROOT / "bench" / "results" / "resume.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
