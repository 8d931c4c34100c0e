"""examples/train_mlp.py under torchrun (2 ranks, gloo, CPU): SIGTERM saves on every rank's agreed step.

torch 2.13's torchrun starts each worker in its own session (start_new_session=True), so a SIGTERM to
torchrun's process group reaches only the agent, which forwards SIGTERM to every worker and waits up to
``--shutdown_timeout`` (30 s) before SIGKILL; the workers agree on the stop step with an all-reduce.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

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
