"""examples/train_mlp.py under torchrun (2 ranks, gloo, CPU): SIGTERM saves on every rank's agreed step; under
grd, a budget stop is TIMEOUT with exit 124 though torchrun exits 1, and a rank that crashes is FAILED.

torch 2.13's torchrun starts each worker in its own session (start_new_session=True), so a SIGTERM to
torchrun's process group reaches only the agent, which forwards SIGTERM to every worker and waits up to
``--shutdown_timeout`` (30 s) before SIGKILL; the workers agree on the stop step with an all-reduce.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from grd_blocks.orchestration.execute import execute
from grd_blocks.orchestration.run import BenchmarkRun
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CommandReport
from grd_blocks.spec import parse_spec
from tests.training import _script

pytestmark = pytest.mark.torch_procs  # a 2-rank torchrun job

ARGS = ["--epochs", "2", "--samples", "128", "--batch-size", "16"]  # 4 steps per rank per epoch, 8 in all


def test_torchrun_sigterm_then_relaunch_matches_uninterrupted_two_rank_run(tmp_path: Path) -> None:
    rc, out = _script.run(
        [*ARGS, "--checkpoint-url", str(tmp_path / "full"), "--report", str(tmp_path / "full.json")], nproc=2
    )
    assert rc == 0, out

    log, report = tmp_path / "steps.log", tmp_path / "r.json"
    args = [*ARGS, "--checkpoint-url", str(tmp_path / "ck"), "--steps-log", str(log), "--report", str(report)]
    proc = _script.start([*args, "--step-delay", "0.1"], nproc=2)
    try:
        _script.wait_for_steps(proc, log, 3)
        os.killpg(proc.pid, signal.SIGTERM)
        rc, out = _script.finish(proc)
    finally:
        _script.stop(proc)
    assert rc != 0, out
    assert out.count("got SIGTERM") == 2, out  # each rank handled it
    first = _script.steps(log)
    assert "training stopped (preempted)" in out and f"global step {len(first)}" in out, out

    rc, out = _script.run(args, nproc=2)
    assert rc == 0, out
    assert f"(step {len(first)})" in out
    assert _script.steps(log) == list(range(1, 9))
    assert _script.params(report) == _script.params(tmp_path / "full.json")


def _under_grd(tmp_path: Path, *worker: str) -> CommandReport:
    """``worker`` under torchrun (2 ranks) as a command grd runs: its real runner (keeper, budget, log).
    The command's own budget is generous (start-up on a loaded machine takes seconds); the workers' budget
    is set by ``--time-left`` where a test wants a budget stop, so grd's deadline never decides the status."""
    argv = json.dumps(_script.command(list(worker[1:]), nproc=2, script=Path(worker[0])))
    spec = parse_spec(f"""
name: launcher
timeout: 600s
defaults: {{grace: 5s}}
phases:
  - name: train
    commands:
      - name: ddp
        run: {argv}
        timeout: 300s
        cwd: {json.dumps(str(_script.ROOT))}
        env: {{OMP_NUM_THREADS: "1", PYTHONPATH: {json.dumps(str(_script.ROOT))}}}
""")
    run = BenchmarkRun(spec=spec, run_key="torchrun-1", logs_dir=tmp_path / "logs")
    phase_run = run.begin_phase(run.plan.phase("train"))
    return execute(run.dispatch(phase_run, phase_run.phase.command("ddp")))


def test_a_torchrun_job_stopped_by_its_budget_is_timeout_with_exit_124_though_torchrun_exits_1(
    tmp_path: Path,
) -> None:
    row = _under_grd(tmp_path, str(_script.SCRIPT), "--epochs", "100000", "--samples", "128", "--batch-size",
                     "16", "--step-delay", "0.05", "--time-left", "2",
                     "--checkpoint-url", str(tmp_path / "ck"))
    log = Path(str(row.log_path)).read_text()
    assert row.status is Status.TIMEOUT and row.returncode == 124, log
    timeout = row.timeout
    assert timeout is not None and timeout.launcher_returncode == 1, log  # torchrun's own code, kept
    assert timeout.term_sent_s is None and timeout.stopped_by is None, log  # grd's deadline played no part
    assert "training stopped (deadline)" in log and "ChildFailedError" in log, log
    assert "reported as TIMEOUT, exit code 124" in (row.note or "")


def test_a_torchrun_job_whose_rank_raises_is_failed_with_torchruns_exit_code(tmp_path: Path) -> None:
    row = _under_grd(tmp_path, str(Path(__file__).with_name("_failing_rank.py")))
    log = Path(str(row.log_path)).read_text()
    assert row.status is Status.FAILED and row.returncode == 1, log
    assert row.timeout is None and row.note is None, log
    assert "rank 1 fails on purpose" in log, log
