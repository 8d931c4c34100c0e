"""examples/train_mlp.py as a process: SIGTERM/SIGINT lose no completed step, SIGKILL at most one interval."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.training import TrainConfig
from grd_blocks.training.reference import train_mlp
from grd_blocks.training.resume import newest
from tests.training import _script

pytestmark = pytest.mark.torch_procs  # the training script runs as a real process

ARGS = ["--epochs", "3", "--samples", "128", "--batch-size", "16"]  # 8 steps per epoch, 24 in all
TARGET = 24


@pytest.fixture(scope="module")
def reference_params() -> list[object]:
    """The library's reference run (same model, data and seed as the example), computed in-process."""
    models: list[torch.nn.Module] = []
    train_mlp(TrainConfig(epochs=3, samples=128, batch_size=16), None, model_out=models)
    return [tensor.tolist() for tensor in models[0].state_dict().values()]


def _params(report: Path) -> list[object]:
    return list(_script.params(report).values())


def test_sigterm_mid_epoch_loses_no_completed_step(tmp_path: Path, reference_params: list[object]) -> None:
    sig, code = signal.SIGTERM, 143
    log, report = tmp_path / "steps.log", tmp_path / "r.json"
    args = [*ARGS, "--checkpoint-url", str(tmp_path / "ck"), "--steps-log", str(log), "--report", str(report)]
    proc = _script.start([*args, "--step-delay", "0.05"])
    _script.wait_for_steps(proc, log, 11)
    proc.send_signal(sig)
    rc, out = _script.finish(proc)
    assert rc == code, out
    first = _script.steps(log)
    assert first == list(range(1, len(first) + 1)) and len(first) < TARGET
    rc, out = _script.run(args)
    assert rc == 0, out
    assert f"(step {len(first)})" in out  # resumed exactly after the last completed step
    assert _script.steps(log) == list(range(1, TARGET + 1))  # no step repeated or missing
    assert _params(report) == reference_params


def test_sigint_saves_every_completed_step_and_exits_130(tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    proc = _script.start(
        [*ARGS, "--checkpoint-url", str(tmp_path / "ck"), "--steps-log", str(log), "--step-delay", "0.05"]
    )
    _script.wait_for_steps(proc, log, 5)
    proc.send_signal(signal.SIGINT)
    rc, out = _script.finish(proc)
    assert rc == 130, out
    found = newest(RunCheckpoints.from_url(str(tmp_path / "ck")))
    assert found is not None
    state = found[0].load()
    assert state is not None and state["position"]["global_step"] == len(_script.steps(log))


def test_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    proc = _script.start(
        [*ARGS, "--checkpoint-url", str(tmp_path / "ck"), "--steps-log", str(log), "--step-delay", "0.5"]
    )
    _script.wait_for_steps(proc, log, 2)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # window 0: the second one chains to the default action
    rc, out = _script.finish(proc)
    assert rc in (-signal.SIGTERM, 143), out


def test_sigkill_loses_at_most_one_checkpoint_interval(
    tmp_path: Path, reference_params: list[object]
) -> None:
    log, report = tmp_path / "steps.log", tmp_path / "r.json"
    interval = 5
    args = [
        *ARGS,
        "--checkpoint-url",
        str(tmp_path / "ck"),
        "--save-every-steps",
        str(interval),
        "--steps-log",
        str(log),
        "--report",
        str(report),
    ]
    proc = _script.start([*args, "--step-delay", "0.05"])
    _script.wait_for_steps(proc, log, 13)
    proc.send_signal(signal.SIGKILL)
    rc, _ = _script.finish(proc)
    assert rc == -signal.SIGKILL
    done_before = len(_script.steps(log))
    rc, out = _script.run(args)
    assert rc == 0, out
    resumed_at = int(out.split("(step ")[1].split(")")[0])
    assert 0 <= done_before - resumed_at < interval + 1  # the step in flight may have been logged, not saved
    assert _script.steps(log)[done_before:] == list(range(resumed_at + 1, TARGET + 1))
    assert _params(report) == reference_params


def test_grds_deadline_warning_makes_the_script_save_and_exit_124_before_its_deadline(tmp_path: Path) -> None:
    """Under grd (GRD_RUN_KEY set) with ``warn``: the warning arrives mid-epoch, the script saves at the next
    step boundary and exits 124 by itself, long before the deadline, with every logged step committed."""
    import signal as signals
    import time

    from grd_blocks.process import DeadlineWarning, run_command
    from tests.process.helpers import GateClock

    log = tmp_path / "steps.log"
    before_s = 30.0

    class WarnOnceStepping(GateClock):
        """Real time until 3 steps are logged, then 1 ms inside the warning window."""

        def __call__(self) -> float:
            now = time.monotonic()
            if not self.jump and (now > self.give_up or self.ready()):
                self.jump = self.deadline - now - before_s + 0.001
            return now + self.jump

    clock = WarnOnceStepping(lambda: len(_script.steps(log)) >= 3)
    env = _script.env(GRD_RUN_KEY="warned", GRD_WARN_SIGNAL="SIGUSR1", GRD_WARN_S=str(before_s))
    outcome = run_command(
        _script.command([*ARGS, "--checkpoint-url", str(tmp_path / "ck"), "--steps-log", str(log),
                         "--step-delay", "0.05"]),
        env=env, deadline=clock.deadline, clock=clock, grace_s=5.0,
        warn=DeadlineWarning(signals.SIGUSR1, before_s), cwd=_script.ROOT,
    )
    assert outcome.returncode == 124 and not outcome.timed_out, outcome.stderr_tail
    assert outcome.warn_sent_s is not None and outcome.term_sent_s is None
    found = newest(RunCheckpoints.from_url(str(tmp_path / "ck")))
    assert found is not None
    state = found[0].load()
    assert state is not None and state["position"]["global_step"] == len(_script.steps(log)) < TARGET
