"""The Hugging Face Trainer through grd's store: resumes bit for bit after SIGTERM (at an epoch boundary and
mid epoch), a damaged newest checkpoint, grd's deadline warning signal, a grd budget and SIGKILL; a
half-written local folder is never resumed from; retention is the store's and never deletes before the
newer commit; ``load_best_model_at_end`` ends with the uninterrupted run's best model though every retry lost
its output_dir."""

from __future__ import annotations

import logging
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import TrainingInterrupted
from grd_blocks.integrations.huggingface import GrdTrainerCallback
from grd_blocks.training.shutdown import GracefulShutdown
from tests.integrations import _hf_script
from tests.training import _script

pytestmark = pytest.mark.torch_procs  # the Trainer runs as real processes

SCRIPT = Path(__file__).with_name("_hf_script.py")
STEPS_PER_EPOCH = 16
EPOCHS = 4


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    # the Trainer saves every 4 steps in every run (a resumed run takes save_steps from the checkpoint, so it
    # saves at the step that ends an epoch too) and evaluates at every epoch's end
    return {"CK": str(tmp / "ck"), "OUT_DIR": str(tmp / "out"), "STEPS_LOG": str(tmp / "log"),
            "EPOCHS": str(EPOCHS), "SAVE_STEPS": "4", "EVAL": "1", **extra}


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert left["global_step"] == right["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert left["model"].keys() == right["model"].keys()
    for key, tensor in left["model"].items():
        assert torch.equal(right["model"][key], tensor), key


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _latest(tmp: Path) -> str | None:
    ref = RunCheckpoints.from_url(str(tmp / "ck")).latest()
    return None if ref is None else ref.name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("full")
    rc, out = _script.run([], script=SCRIPT, **_env(where, OUT=str(where / "full.pt")))
    assert rc == 0, out
    return where / "full.pt"


def test_resumes_bit_for_bit_after_sigterm_at_epoch_end_and_mid_epoch_damage_a_warning_a_budget_and_sigkill(
    tmp_path: Path, uninterrupted: Path
) -> None:
    spe = STEPS_PER_EPOCH
    # SIGTERM as the epoch's last step ends: the Trainer's own save of that step does not stop it; the stop
    # save is made at the epoch's end, after its evaluation (epoch 1 done)
    rc, out = _script.run([], script=SCRIPT, **_env(tmp_path, SIGNAL_AT=str(spe)))
    assert rc == 143, out
    assert "training stopped (preempted)" in out and _latest(tmp_path) == f"step_{spe}"
    # the script configures no logging: grd's one line of what training does still shows
    assert f"grd: no committed checkpoint under {tmp_path / 'ck'} yet: training starts fresh" in out
    # SIGTERM mid epoch 3, after the Trainer's own save at the step that ended epoch 2 (committed as saved
    # again after that epoch's evaluation)
    rc, out = _script.run([], script=SCRIPT, **_env(tmp_path, SIGNAL_AT=str(2 * spe + 1)))
    assert rc == 143, out
    assert _latest(tmp_path) == f"step_{2 * spe + 1}"
    assert f"grd: resuming from {tmp_path / 'ck'} (step {spe})" in out and "training continues" in out
    # the newest is damaged: the next attempt resumes from the epoch-end one before it, exactly
    _damage(tmp_path / "ck" / f"step_{2 * spe + 1}" / "state.pt")
    # grd's deadline warning (GRD_WARN_SIGNAL) at a step the Trainer saves anyway: one save, exit 124
    warn = {"GRD_WARN_SIGNAL": "SIGUSR1", "SIGNAL": "SIGUSR1", "SIGNAL_AT": str(2 * spe + 4)}
    rc, out = _script.run([], script=SCRIPT, **_env(tmp_path, **warn))
    assert rc == 124 and "training stopped (deadline)" in out, out
    assert f"step_{2 * spe + 1} is damaged" in out and _latest(tmp_path) == f"step_{2 * spe + 4}"
    # a grd budget: GRD_TIME_LEFT_S with slow steps saves and stops with exit 124, mid epoch
    rc, out = _script.run([], script=SCRIPT, **_env(tmp_path, STEP_DELAY="0.3", GRD_TIME_LEFT_S="4"))
    assert rc == 124, out
    assert "training stopped (deadline)" in out
    # SIGKILL: what the Trainer's last save (every 4 steps) committed is where the next attempt resumes
    log = tmp_path / "log"
    proc = _script.start([], script=SCRIPT, **_env(tmp_path, STEP_DELAY="0.05"))
    try:
        _script.wait_for_steps(proc, log, len(_script.steps(log)) + 8)
        proc.send_signal(signal.SIGKILL)
        rc, _ = _script.finish(proc)
    finally:
        _script.stop(proc)
    assert rc == -signal.SIGKILL
    killed_at = _latest(tmp_path)
    assert killed_at is not None and int(killed_at.split("_")[1]) % 4 == 0
    rc, out = _script.run([], script=SCRIPT, **_env(tmp_path, OUT=str(tmp_path / "out.pt")))
    assert rc == 0, out
    assert sorted(set(_script.steps(log))) == list(range(1, EPOCHS * spe + 1))
    _assert_same_weights(uninterrupted, tmp_path / "out.pt")


# ---------------------------------------------------------------------- in process


class _Probe(TrainerCallback):
    """What the store holds at each of the Trainer's saves, before grd commits it, and the first step."""

    def __init__(self, checkpoints: RunCheckpoints) -> None:
        self.checkpoints = checkpoints
        self.before_commit: list[tuple[int, list[str]]] = []
        self.first_step: int | None = None

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        if self.first_step is None:
            self.first_step = state.global_step + 1

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        self.before_commit.append((state.global_step, [ref.name for ref in self.checkpoints.checkpoints()]))


def _train(tmp: Path, epochs: int, **overrides: Any) -> tuple[_Probe, GrdTrainerCallback]:
    checkpoints = RunCheckpoints.from_url(str(tmp / "ck"))
    grd = GrdTrainerCallback(checkpoints)
    probe = _Probe(checkpoints)
    options: dict[str, Any] = {"save_strategy": "steps", "save_steps": 4, **overrides}
    args = _hf_script.arguments(str(tmp / "out"), epochs, **options)
    trainer = Trainer(model=_hf_script.tiny_model(), args=args, train_dataset=_hf_script.dataset(),
                      callbacks=[probe, grd])
    try:
        trainer.train(resume_from_checkpoint=grd.resume_from(trainer))
    finally:
        grd.policy.uninstall()
    return probe, grd


def test_a_damaged_newest_checkpoint_or_a_half_written_local_folder_is_never_resumed_from(
    tmp_path: Path,
) -> None:
    _train(tmp_path, 1)
    run = RunCheckpoints.from_url(str(tmp_path / "ck"))
    assert [ref.name for ref in run.checkpoints()] == ["step_4", "step_8", "step_12", "step_16"]
    _damage(tmp_path / "ck" / "step_16" / "state.pt")
    # a crash inside the Trainer's own save leaves a local folder the Trainer's resume would pick by name
    partial = tmp_path / "out" / "checkpoint-99"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    assert get_last_checkpoint(str(tmp_path / "out")) == str(partial)
    probe, _ = _train(tmp_path, 2)
    assert probe.first_step == 13  # step_12 (the one before the damaged step_16), not 100 nor a fresh start
    assert run.latest().name == f"step_{2 * STEPS_PER_EPOCH}"  # type: ignore[union-attr]


def test_retention_is_save_total_limit_in_the_store_and_never_deletes_before_the_newer_commit(
    tmp_path: Path,
) -> None:
    probe, grd = _train(tmp_path, 1, save_total_limit=2)
    assert grd.checkpoints.retention.keep_last == 2
    run = RunCheckpoints.from_url(str(tmp_path / "ck"))
    assert [ref.name for ref in run.checkpoints()] == ["step_12", "step_16"]
    # at every save, before grd committed it, the store still held the two committed before (the Trainer
    # saves step 16, the epoch's last, twice: grd commits the save made after the epoch's end)
    assert probe.before_commit == [(4, []), (8, ["step_4"]), (12, ["step_4", "step_8"]),
                                   (16, ["step_8", "step_12"]), (16, ["step_8", "step_12"])]
    latest = run.latest()
    assert latest is not None and latest.metadata["hf_folder"] == "checkpoint-16"
    assert latest.metrics["loss"] > 0 and latest.metrics["learning_rate"] > 0  # the Trainer's logged scalars


def test_a_rerun_with_fewer_epochs_says_nothing_is_left_to_train(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _train(tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger="grd.integrations.huggingface"):
        probe, _ = _train(tmp_path, 1)
    assert probe.first_step is None  # the Trainer trained nothing, and grd said so in one line
    (line,) = [r.getMessage() for r in caplog.records if r.name == "grd.integrations.huggingface"]
    assert line.startswith(f"grd: {tmp_path / 'ck'}/step_{2 * STEPS_PER_EPOCH} (global step 32) already "
                           "reached this run's max_steps=16 (num_train_epochs=1")
    assert "nothing is left to train" in line and "fresh run prefix" in line


def test_nothing_committed_starts_fresh(tmp_path: Path) -> None:
    probe, grd = _train(tmp_path, 1, save_strategy="no")
    assert probe.first_step == 1 and grd.last_url is None
    assert RunCheckpoints.from_url(str(tmp_path / "ck")).latest() is None


class _StopAt(TrainerCallback):
    """Asks grd to stop (as SIGTERM would) when ``step`` ends; it runs before grd's callback."""

    def __init__(self, shutdown: GracefulShutdown, step: int) -> None:
        self.shutdown, self.step = shutdown, step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if state.global_step == self.step:
            self.shutdown.request()


_BEST = {"eval_strategy": "steps", "eval_steps": 4, "save_strategy": "steps", "save_steps": 4,
         "save_total_limit": 2, "load_best_model_at_end": True, "metric_for_best_model": "eval_loss"}


def _fit_best(output_dir: Path, ck: Path, stop_at: int | None = None) -> Trainer:
    """One attempt of a 1-epoch run that ends with the best model by eval_loss; a fresh Trainer each time."""
    shutdown = GracefulShutdown()
    grd = GrdTrainerCallback(RunCheckpoints.from_url(str(ck)), shutdown=shutdown)
    stop = [] if stop_at is None else [_StopAt(shutdown, stop_at)]
    trainer = Trainer(model=_hf_script.tiny_model(), args=_hf_script.arguments(str(output_dir), 1, **_BEST),
                      train_dataset=_hf_script.dataset(), eval_dataset=_hf_script.dataset(8, seed=2),
                      callbacks=[*stop, grd])
    try:
        trainer.train(resume_from_checkpoint=grd.resume_from(trainer))
    finally:
        grd.policy.uninstall()
    return trainer


def test_load_best_model_at_end_ends_with_the_same_best_model_when_every_retry_lost_its_output_dir(
    tmp_path: Path,
) -> None:
    full = _fit_best(tmp_path / "full", tmp_path / "full-ck")
    best_step = full.state.best_global_step
    assert best_step is not None and 0 < best_step < STEPS_PER_EPOCH  # the best model is not the last one
    ck = tmp_path / "ck"
    # stopped just after the best evaluation, then again after store retention (save_total_limit=2) ran:
    # every retry runs in a fresh output_dir, as on another machine, the previous one deleted
    for attempt, stop_at in enumerate((best_step + 1, best_step + 6)):
        with pytest.raises(TrainingInterrupted):
            _fit_best(tmp_path / f"out{attempt}", ck, stop_at=stop_at)
        shutil.rmtree(tmp_path / f"out{attempt}")
    resumed = _fit_best(tmp_path / "out-last", ck)
    assert resumed.state.best_global_step == best_step
    assert resumed.state.best_metric == full.state.best_metric
    assert f"step_{best_step}" in [ref.name for ref in RunCheckpoints.from_url(str(ck)).checkpoints()]
    expected, got = full.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys()
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key
    last = RunCheckpoints.from_url(str(ck)).latest()  # the last model differs: the best one was loaded
    assert last is not None and last.step == STEPS_PER_EPOCH
