"""Your own loop: a script-style loop resumes bit for bit with a few lines, and each friction it met is gone.

A real process runs ``_script_style.py`` (module level, ``torch.randint`` batches, a prefetched batch, a
GradScaler, LR by iteration) and is stopped by grd's budget, by SIGTERM and by SIGKILL; its final weights
equal an uninterrupted run's, bit for bit. The other tests prove one removed friction each, in process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import ConfigError, TrainingInterrupted
from grd_blocks.training import ResumableTraining, make_deterministic
from tests.training import _script

SCRIPT = Path(__file__).with_name("_script_style.py")


def _start(ck: Path, log: Path, **extra: str) -> subprocess.Popen[str]:
    return _script.start([], script=SCRIPT, GRD_CHECKPOINT_URL=str(ck), STEPS_LOG=str(log), **extra)


def _run(ck: Path, log: Path, **extra: str) -> tuple[int, str]:
    proc = _start(ck, log, **extra)
    return _script.finish(proc)


def _weights(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, weights_only=True)
    return state


@pytest.mark.torch_procs
def test_script_style_loop_with_a_prefetched_batch_resumes_bit_for_bit_after_budget_sigterm_and_sigkill(
    tmp_path: Path,
) -> None:
    rc, out = _run(tmp_path / "full", tmp_path / "full.log", MAX_ITERS="30", OUT=str(tmp_path / "full.pt"))
    assert rc == 0, out
    ck, log, final = tmp_path / "ck", tmp_path / "steps.log", tmp_path / "final.pt"
    # 1. grd's budget (GRD_TIME_LEFT_S): saves and stops while a step and a save still fit; uncaught -> 124
    rc, out = _run(ck, log, MAX_ITERS="10", STEP_DELAY="0.2", GRD_TIME_LEFT_S="1.2")
    assert rc == 124, out
    assert "training stopped (deadline)" in out
    budget_steps = len(_script.steps(log))
    assert 0 < budget_steps < 10
    # 2. SIGTERM mid-run, with a larger target than the first attempt had (the step-only mode may grow)
    proc = _start(ck, log, MAX_ITERS="20", STEP_DELAY="0.05")
    _script.wait_for_steps(proc, log, budget_steps + 3)
    proc.send_signal(signal.SIGTERM)
    rc, out = _script.finish(proc)
    assert rc == 143, out
    # 3. SIGKILL between interval saves: the run resumes from the last interval checkpoint
    proc = _start(ck, log, MAX_ITERS="30", STEP_DELAY="0.05", SAVE_EVERY="4")
    before_kill = len(_script.steps(log))
    _script.wait_for_steps(proc, log, before_kill + 6)
    proc.send_signal(signal.SIGKILL)
    rc, _ = _script.finish(proc)
    assert rc == -signal.SIGKILL
    rc, out = _run(ck, log, MAX_ITERS="30", SAVE_EVERY="4", OUT=str(final))
    assert rc == 0, out
    done = _script.steps(log)
    assert done[-1] == 30 and sorted(set(done)) == list(range(1, 31))  # steps after the kill ran again
    expected, resumed = _weights(tmp_path / "full.pt"), _weights(final)
    assert resumed["iters"] == expected["iters"] == 30
    assert resumed["best_val_loss"] == expected["best_val_loss"]
    for key, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def _train_steps(prefix: RunCheckpoints, target: int, *, stop_at: int | None = None) -> _Net:
    """A step-only loop: ``target`` steps in all, resumed from ``prefix``; batches from the global RNG."""
    torch.manual_seed(0)
    model = _Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    training = ResumableTraining(prefix, {"model": model, "optimizer": optimizer}, steps_per_epoch=None,
                                 stop_at_step=stop_at)
    step = training.resume().global_step
    while step < target:
        x = torch.randn(8, 4)
        nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        training.step_done()
    training.finish()
    return model


def test_step_only_target_may_grow_between_attempts(tmp_path: Path) -> None:
    full = _train_steps(RunCheckpoints.from_url(str(tmp_path / "full")), 15)
    prefix = RunCheckpoints.from_url(str(tmp_path / "grown"))
    _train_steps(prefix, 10)  # a first attempt with a smaller max_iters completes and saves step_10
    grown = _train_steps(prefix, 15)  # raising the target continues at step 10 (no ConfigError)
    latest = prefix.latest()
    assert latest is not None and latest.name == "step_15"
    for key, tensor in full.state_dict().items():
        assert torch.equal(grown.state_dict()[key], tensor), key


def test_plain_values_are_saved_and_returned_by_resume(tmp_path: Path) -> None:
    prefix = RunCheckpoints.from_url(str(tmp_path / "run"))
    model = _Net()
    values = {"best_val_loss": 1e9, "tokens_seen": 0, "tag": "a", "history": [], "batch": None}
    training = ResumableTraining(prefix, {"model": model, **values}, steps_per_epoch=None, stop_at_step=2)
    assert training.resume().values == values
    batch = (torch.arange(3.0), torch.ones(2))
    with pytest.raises(TrainingInterrupted):
        for step in range(1, 4):
            training.values.update(best_val_loss=0.5 / step, tokens_seen=64 * step, history=[step],
                                   batch=batch)
            training.step_done()
    again = ResumableTraining(prefix, {"model": _Net(), **values}, steps_per_epoch=None)
    start = again.resume()
    again.finish()
    assert (start.global_step, start["best_val_loss"], start["tokens_seen"]) == (2, 0.25, 128)
    assert start["tag"] == "a" and start["history"] == [2]
    assert all(torch.equal(a, b) for a, b in zip(start["batch"], batch, strict=True))


def test_uncaught_stop_exits_with_its_code_outside_grd(tmp_path: Path) -> None:
    """No ``with`` block, nothing caught, GRD_RUN_KEY unset: the deadline stop exits 124, not 1."""
    code = f"""
import torch
from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.training import ResumableTraining
model = torch.nn.Linear(2, 1)
training = ResumableTraining(RunCheckpoints.from_url({str(tmp_path / "ck")!r}), {{"model": model}},
                             steps_per_epoch=None)
training.resume()
training.pacer.deadline = training.pacer.clock()  # the budget is spent: the next boundary saves and stops
training.step_done()
print("not reached")
"""
    done = subprocess.run([sys.executable, "-c", code], env=_script.env(), cwd=_script.ROOT, text=True,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 124, done.stderr
    assert "not reached" not in done.stdout
    assert "grd: training stopped (deadline) after global step 1" in done.stderr
    latest = RunCheckpoints.from_url(str(tmp_path / "ck")).latest()
    assert latest is not None and latest.name == "step_1"


def test_checkpoints_load_across_compile_and_ddp_wrappers(tmp_path: Path) -> None:
    """``_orig_mod.`` (torch.compile) and ``module.`` (DDP/DataParallel) never reach the checkpoint, and a
    state dict that carries them (written by plain torch) loads into a model wrapped differently."""
    prefix = RunCheckpoints.from_url(str(tmp_path / "run"))
    source = _Net()
    prefix.save({"model": torch.compile(nn.DataParallel(source))}, step=1)
    state = prefix.load()
    assert state is not None and sorted(state["model"]) == sorted(source.state_dict())
    for wrapped in (_Net(), torch.compile(_Net()), nn.DataParallel(_Net())):
        prefix.load(into={"model": wrapped})
        bare = wrapped._orig_mod if hasattr(wrapped, "_orig_mod") else getattr(wrapped, "module", wrapped)
        for key, tensor in source.state_dict().items():
            assert torch.equal(bare.state_dict()[key], tensor), key
    raw = {f"module._orig_mod.{key}": value for key, value in source.state_dict().items()}
    prefix.save({"model": raw}, step=2)  # plain data, as a hand-written torch checkpoint would hold it
    target = torch.compile(_Net())
    from grd_blocks.checkpoint.payload.handlers import ModuleHandler

    ModuleHandler().restore(target, raw, "model")
    assert torch.equal(target._orig_mod.body[0].weight, source.body[0].weight)


def test_from_env_is_usable_outside_grd(tmp_path: Path) -> None:
    assert RunCheckpoints.from_env({}, default=None) is None
    opened = RunCheckpoints.from_env({}, default=str(tmp_path / "mine"))
    assert opened.url == str(tmp_path / "mine")
    assert RunCheckpoints.from_env({"GRD_CHECKPOINT_URL": str(tmp_path / "grd")}, default=None) is not None
    with pytest.raises(ConfigError, match="from_env\\(default="):
        RunCheckpoints.from_env({})


def test_make_deterministic_keeps_the_thread_count_unless_asked() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert make_deterministic(0) == 2 == torch.get_num_threads()
        assert make_deterministic(0, threads=1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
