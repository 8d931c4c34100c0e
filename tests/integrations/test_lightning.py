"""Lightning through grd's store: resumes bit for bit after SIGTERM, a grd budget and SIGKILL, at an epoch
boundary and mid epoch, with 1 and 2 ranks; and each Lightning checkpoint pitfall has a test of its own.

The processes run ``_lightning_script.py`` (a real ``Trainer``; torchrun + DDP on gloo for 2 ranks); the
pitfall tests run a real ``Trainer`` in process.
"""

from __future__ import annotations

import csv
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import TrainingInterrupted
from grd_blocks.integrations.lightning import GrdLightning
from grd_blocks.training import synthetic_regression
from grd_blocks.training.shutdown import GracefulShutdown
from tests.integrations._lightning_script import Regressor
from tests.training import _script

pytestmark = pytest.mark.torch_procs  # Lightning runs as real processes (and 2 DDP ranks)

SCRIPT = Path(__file__).with_name("_lightning_script.py")
STEPS_PER_EPOCH = 16  # 256 samples, 16 per step (8 per rank with 2 ranks)
EPOCHS = 3


def _weights(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, weights_only=True)
    return state


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = _weights(a), _weights(b)
    assert left["global_step"] == right["global_step"] == EPOCHS * STEPS_PER_EPOCH
    for key, tensor in left["model"].items():
        assert torch.equal(right["model"][key], tensor), key


def _env(ck: Path, log: Path, **extra: str) -> dict[str, str]:
    return {"CK": str(ck), "STEPS_LOG": str(log), "EPOCHS": str(EPOCHS), **extra}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("full")
    rc, out = _script.run([], script=SCRIPT, **_env(where / "ck", where / "log", OUT=str(where / "full.pt")))
    assert rc == 0, out
    return where / "full.pt"


def test_resumes_bit_for_bit_after_sigterm_at_an_epoch_boundary_then_mid_epoch_a_budget_and_sigkill(
    tmp_path: Path, uninterrupted: Path
) -> None:
    ck, log, out_pt = tmp_path / "ck", tmp_path / "log", tmp_path / "out.pt"
    # SIGTERM during the epoch's last batch: the stop save is the epoch boundary (epoch 1 done)
    rc, out = _script.run([], script=SCRIPT, **_env(ck, log, SIGTERM_AT=str(STEPS_PER_EPOCH - 1)))
    assert rc == 143, out
    assert RunCheckpoints.from_url(str(ck)).latest().name == f"step_{STEPS_PER_EPOCH}"  # type: ignore[union-attr]
    # SIGTERM mid epoch 2
    rc, out = _script.run([], script=SCRIPT, **_env(ck, log, SIGTERM_AT=str(STEPS_PER_EPOCH + 4)))
    assert rc == 143, out
    # a grd budget: GRD_TIME_LEFT_S with slow steps saves and stops with exit 124, mid epoch
    rc, out = _script.run([], script=SCRIPT, **_env(ck, log, STEP_DELAY="0.3", GRD_TIME_LEFT_S="4"))
    assert rc == 124, out
    assert "training stopped (deadline)" in out
    # SIGKILL: what the last ModelCheckpoint save (every 5 steps) holds is where the next attempt resumes
    proc = _script.start([], script=SCRIPT, **_env(ck, log, STEP_DELAY="0.05", EVERY="5"))
    try:
        _script.wait_for_steps(proc, log, len(_script.steps(log)) + 8)
        proc.send_signal(signal.SIGKILL)
        rc, _ = _script.finish(proc)
    finally:
        _script.stop(proc)
    assert rc == -signal.SIGKILL
    rc, out = _script.run([], script=SCRIPT, **_env(ck, log, OUT=str(out_pt)))
    assert rc == 0, out
    assert sorted(set(_script.steps(log))) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    _assert_same_weights(uninterrupted, out_pt)


def test_two_ranks_resume_bit_for_bit_after_sigterm_mid_epoch(tmp_path: Path) -> None:
    full = tmp_path / "full.pt"
    rc, out = _script.run([], nproc=2, script=SCRIPT,
                          **_env(tmp_path / "f", tmp_path / "flog", OUT=str(full)))
    assert rc == 0, out
    ck, log, out_pt = tmp_path / "ck", tmp_path / "log", tmp_path / "out.pt"
    rc, out = _script.run([], nproc=2, script=SCRIPT, **_env(ck, log, SIGTERM_AT=str(STEPS_PER_EPOCH + 5)))
    assert rc != 0 and "training stopped (preempted)" in out, out
    latest = RunCheckpoints.from_url(str(ck)).latest()
    assert latest is not None and latest.name == f"step_{STEPS_PER_EPOCH + 6}"
    rc, out = _script.run([], nproc=2, script=SCRIPT, **_env(ck, log, OUT=str(out_pt)))
    assert rc == 0, out
    _assert_same_weights(full, out_pt)


# ---------------------------------------------------------------------- the pitfalls, in process


class _Probe(Callback):
    """Records what the store holds when training starts and the first global step it trains."""

    def __init__(self, checkpoints: RunCheckpoints) -> None:
        self.checkpoints = checkpoints
        self.at_start: list[str] = []
        self.first_step: int | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.first_step is None:
            self.first_step = trainer.global_step
            self.at_start = [ref.name for ref in self.checkpoints.checkpoints()]


def _fit(url: str, epochs: int, *, top_k: int = 2, every: int | None = 4, **trainer: Any) -> _Probe:
    checkpoints = RunCheckpoints.from_url(url)
    grd = GrdLightning(checkpoints)
    probe = _Probe(checkpoints)
    torch.manual_seed(0)
    fit = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, plugins=[grd.io],
        callbacks=[grd, probe, ModelCheckpoint(dirpath="unused", monitor="loss", save_top_k=top_k,
                                                every_n_train_steps=every, save_last=True)],
        **trainer,
    )
    loader = grd.loader(synthetic_regression(256, 8, seed=0), batch_size=16, seed=0)
    fit.fit(Regressor(), train_dataloaders=loader, ckpt_path="grd:latest")
    grd.policy.uninstall()
    return probe


def test_retention_is_top_k_by_monitor_plus_a_true_last_and_never_deletes_the_checkpoint_resumed_from(
    tmp_path: Path,
) -> None:
    url = str(tmp_path / "run")
    _fit(url, 1)
    run = RunCheckpoints.from_url(url)
    refs = run.checkpoints()
    best = sorted(refs, key=lambda ref: ref.metrics["loss"])[:2]
    latest = run.latest()
    assert latest is not None and latest.name == f"step_{STEPS_PER_EPOCH}"  # LATEST moved on every save
    assert {ref.name for ref in refs} == {ref.name for ref in best} | {latest.name}
    probe = _fit(url, 2)  # resume: the checkpoint it resumed from is still there when training goes on
    assert probe.first_step == STEPS_PER_EPOCH and latest.name in probe.at_start
    assert run.latest().name == f"step_{2 * STEPS_PER_EPOCH}"  # type: ignore[union-attr]


def test_last_works_on_an_object_store_url() -> None:
    url = "memory://grd-lightning-test/run"
    _fit(url, 1, every=None)
    probe = _fit(url, 2, every=None)
    assert probe.first_step == STEPS_PER_EPOCH


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    url = str(tmp_path / "run")
    _fit(url, 1, top_k=-1)
    run = RunCheckpoints.from_url(url)
    newest = run.latest()
    assert newest is not None and newest.name == f"step_{STEPS_PER_EPOCH}"
    payload = tmp_path / "run" / newest.name / "state.pt"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    probe = _fit(url, 2, top_k=-1)
    assert probe.first_step == 12  # the previous one (every 4 steps), not a fresh start nor the damaged one


@pytest.fixture
def lightning_lines(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """What Lightning's console shows (its logger does not propagate to the root logger)."""
    console = logging.getLogger("lightning.pytorch")
    console.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        console.removeHandler(caplog.handler)


def test_a_fresh_start_says_so_in_grds_line_and_lightning_reports_no_restore(
    tmp_path: Path, lightning_lines: pytest.LogCaptureFixture
) -> None:
    url = str(tmp_path / "run")
    probe = _fit(url, 1, every=None)
    assert probe.first_step == 0
    assert f"grd: no committed checkpoint under {url} yet: training starts fresh" in lightning_lines.text
    assert "Restored all states" not in lightning_lines.text


def test_a_rerun_with_another_epoch_target_says_whether_it_continues_or_has_nothing_left(
    tmp_path: Path, lightning_lines: pytest.LogCaptureFixture
) -> None:
    url = str(tmp_path / "run")
    _fit(url, 2, every=None)
    done = f"{url}/step_{2 * STEPS_PER_EPOCH} (global step {2 * STEPS_PER_EPOCH}, 2 epochs done)"
    with pytest.warns(UserWarning, match="nothing is left to train") as warned:
        probe = _fit(url, 1, every=None)  # fewer epochs than the run already trained: not a silent no-op
    assert probe.first_step is None  # trained nothing, and said so
    assert str(warned[0].message) == (
        f"grd: {done} already reached this run's max_epochs=1: nothing is left to train and fit ends with "
        "that checkpoint's model; to train anew with these settings, give RunCheckpoints a fresh run prefix")
    probe = _fit(url, 3, every=None)  # more epochs: it continues
    assert probe.first_step == 2 * STEPS_PER_EPOCH
    assert f"grd: resuming from {done}: training continues" in lightning_lines.text


class _EpochLogged(Regressor):
    """Also logs an ``on_epoch`` metric (written at the epoch's end, after the hooks a stop raises from)."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("loss_mean", loss, on_step=False, on_epoch=True)
        return loss


class _StopAt(Callback):
    """Asks grd to stop (as SIGTERM would) after global step ``step``; it runs before grd's callback."""

    def __init__(self, shutdown: GracefulShutdown, step: int) -> None:
        self.shutdown, self.step = shutdown, step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            self.shutdown.request()


def _attempt(url: str, logs: Path, version: int, stop_at: int | None = None) -> None:
    """One attempt of a 2-epoch run whose CSVLogger (``logs/csv/version_{version}``) writes every step."""
    shutdown = GracefulShutdown()
    grd = GrdLightning(RunCheckpoints.from_url(url), shutdown=shutdown)
    stop = [] if stop_at is None else [_StopAt(shutdown, stop_at)]
    torch.manual_seed(0)
    fit = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, plugins=[grd.io], callbacks=[*stop, grd], log_every_n_steps=1,
        logger=CSVLogger(logs, name="csv", version=version),
    )
    loader = grd.loader(synthetic_regression(256, 8, seed=0), batch_size=16, seed=0)
    try:
        fit.fit(_EpochLogged(), train_dataloaders=loader, ckpt_path="grd:latest")
    finally:
        grd.policy.uninstall()


def _rows(logs: Path, version: int) -> list[tuple[str, ...]]:
    """The rows a CSVLogger version wrote, each as its non-empty ``column=value`` cells."""
    with open(logs / "csv" / f"version_{version}" / "metrics.csv") as handle:
        return [tuple(f"{key}={value}" for key, value in sorted(row.items()) if value)
                for row in csv.DictReader(handle)]


def test_a_stop_at_an_epochs_end_or_mid_epoch_loses_no_log_row(tmp_path: Path) -> None:
    _attempt(str(tmp_path / "full"), tmp_path / "full-logs", 0)
    logs = tmp_path / "logs"
    for version, stop_at in enumerate((STEPS_PER_EPOCH, STEPS_PER_EPOCH + 5)):  # epoch 1's last batch, mid 2
        with pytest.raises(TrainingInterrupted):
            _attempt(str(tmp_path / "run"), logs, version, stop_at=stop_at)
    _attempt(str(tmp_path / "run"), logs, 2)
    attempts, full = _rows(logs, 0) + _rows(logs, 1) + _rows(logs, 2), _rows(tmp_path / "full-logs", 0)
    epoch_rows = [row for row in full if row[1].startswith("loss_mean=")]
    assert len(epoch_rows) == 2 and epoch_rows[0] in _rows(logs, 0)  # epoch 1's mean, logged by the stop

    def masked(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        # epoch 2 resumed mid-way: its mean covers the last attempt's batches (Lightning keeps no running
        # means in a checkpoint); every row is there, every step's loss equal
        return [tuple("loss_mean=*" if c.startswith("loss_mean=") else c for c in row) for row in rows]

    assert masked(attempts) == masked(full)  # every row once, the stop steps' included
