"""Lightning (``grd[lightning]``): a Trainer that saves through grd's store and resumes exactly.

    grd = GrdLightning(RunCheckpoints.from_env(default="./checkpoints/my-run"))
    trainer = L.Trainer(..., plugins=[grd.io], callbacks=[grd])
    trainer.fit(model, train_dataloaders=grd.loader(dataset, batch_size=32, seed=0), ckpt_path="grd:latest")

Invariants:

* Every save Lightning makes (``ModelCheckpoint``, ``trainer.save_checkpoint``, grd's stop save) is one store
  checkpoint ``step_{global_step}`` committed with the store's protocol (payload fsynced and checksummed,
  manifest last; on S3 manifest-last), with the trainer's scalar metrics. ``LATEST.json`` is a true "last":
  it moves on every commit. Lightning's ``remove_checkpoint`` deletes nothing: retention is the store's and
  runs only after a newer commit (without a retention of its own, the store takes ModelCheckpoint's:
  ``save_top_k`` by ``monitor``/``mode`` -> ``keep_best``, plus the last one).
* ``ckpt_path="grd:latest"`` loads the newest checkpoint whose every sha256 verifies, falling back past a
  damaged one; with none committed yet training starts fresh (Lightning "restores" the model's own state, a
  no-op, and prints no "Restored all states" line). ``grd:step_N`` loads one, and a path Lightning itself
  recorded (``best_model_path``) loads the checkpoint saved under it. Every load from the store says in one
  line (Lightning's console) what happens: training starts fresh, continues from ``step_N``, or has nothing
  left to do because the checkpoint already reached this Trainer's ``max_epochs``/``max_steps`` (a rerun
  with a smaller target: it names the fix, a fresh run prefix).
* A checkpoint holds every rank's RNG state (torch, CUDA, numpy, random), restored on each rank just before
  the first batch after a resume, and the position of the next batch (epoch, batch). Batches from
  ``grd.loader(...)`` (``seeded_loader``'s order) continue at exactly that batch, mid-epoch included, so the
  resumed run trains on the same batches in the same order with the same random numbers: its weights equal
  an uninterrupted run's, bit for bit, at any world size the run keeps.
* SIGTERM, SIGINT, grd's warning signal (``GRD_WARN_SIGNAL``) and the ``GRD_TIME_LEFT_S`` budget (a step and
  a save must still fit) make every rank save at the same batch boundary, then raise ``TrainingInterrupted``
  out of ``trainer.fit``; uncaught, the process exits 124 (deadline), 143 or 130 with the checkpoint
  committed. Before raising, the loggers get the row Lightning would have logged right after the hook (the
  stop step's ``on_step`` metrics, or the finished epoch's ``on_epoch`` ones), so a stop loses no log row.
  The handlers are installed when training starts (after Lightning's own), so Lightning's
  SIGTERM handler, which stops without saving, never sees the first signal.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from grd_blocks.checkpoint import RunCheckpoints, capture_rng_state, restore_rng_state
from grd_blocks.checkpoint.refs import CheckpointRef
from grd_blocks.checkpoint.retention import RetentionPolicy
from grd_blocks.errors import CheckpointNotFound
from grd_blocks.integrations._stopping import StopPolicy
from grd_blocks.integrations._values import plain, scalar_metrics
from grd_blocks.training import dist
from grd_blocks.training.data import batches_per_epoch, seeded_loader
from grd_blocks.training.pacing import Pacer
from grd_blocks.training.shutdown import GracefulShutdown

__all__ = ["GrdCheckpointIO", "GrdLightning", "ResumableLoader"]

logger = logging.getLogger("grd.integrations.lightning")

LATEST = "grd:latest"
_KEY = "grd"  # the checkpoint's own key: RNG states, position, metrics


class GrdCheckpointIO(CheckpointIO):
    """Lightning's checkpoint I/O through grd's store (see the module docstring)."""

    def __init__(self, checkpoints: RunCheckpoints) -> None:
        self.checkpoints = checkpoints
        self.last_url: str | None = None
        self.last_save_s = 0.0
        self._committed: tuple[int, str] | None = None  # (global step, loop state) of the last commit
        self._fresh: dict[str, Any] | None = None  # what "grd:latest" loads while nothing is committed
        self.trainer: pl.Trainer | None = None  # the Trainer loading through it (GrdLightning.setup)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        step = int(checkpoint.get("global_step", 0))
        identity = (step, repr(checkpoint.get("loops")))
        if identity == self._committed:  # ModelCheckpoint's "last" after its top-k save: the same state
            logger.debug("%s holds the same state as %s; not written twice", path, self.last_url)
            return
        started = time.monotonic()
        own = checkpoint.get(_KEY, {})
        ref = self.checkpoints.save(
            plain(checkpoint),
            step=step,
            metrics=own.get("metrics") if isinstance(own, Mapping) else None,
            metadata={
                "lightning_path": str(path), "epoch": int(checkpoint.get("epoch", 0)), "global_step": step
            },
        )
        self.last_save_s = time.monotonic() - started
        self.last_url, self._committed = ref.url, identity
        logger.info("saved %s (Lightning path %s)", ref.url, path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> Any:
        text = str(path)
        if text == LATEST:
            state = self.checkpoints.load()
            if state is None:
                if self.trainer is not None:  # else Lightning reports "Restored all states from grd:latest"
                    self.trainer._checkpoint_connector._ckpt_path = None
                rank_zero_info(f"grd: no committed checkpoint under {self.checkpoints.url} yet: "
                               "training starts fresh")
                return dict(self._fresh or {})
            return state
        ref = self._find(text)
        if ref is None:
            plain_io = TorchCheckpointIO()
            return plain_io.load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        if ref.unit == "step":
            return self.checkpoints.load(step=ref.index)
        return self.checkpoints.load(epoch=ref.index)

    def _find(self, text: str) -> CheckpointRef | None:
        if text.startswith("grd:"):
            name = text[len("grd:") :]
            for ref in self.checkpoints.checkpoints():
                if ref.name == name:
                    return ref
            raise CheckpointNotFound(f"{text}: no committed checkpoint {name} under {self.checkpoints.url}")
        for ref in reversed(self.checkpoints.checkpoints()):
            if ref.metadata.get("lightning_path") == text:
                return ref
        return None

    def remove_checkpoint(self, path: Any) -> None:
        logger.debug("not deleting %s: retention is the store's, after a newer commit", path)


class ResumableLoader:
    """Batches of ``seeded_loader`` for this rank, epoch after epoch, that continue at the exact batch a
    checkpoint stopped before (Lightning restores its ``state_dict``; ``GrdLightning`` keeps it current)."""

    def __init__(self, dataset: Any, *, batch_size: int, seed: int, num_workers: int = 0) -> None:
        self.dataset, self.batch_size, self.seed, self.num_workers = dataset, batch_size, seed, num_workers
        self.epoch = 0
        self.next_batch: tuple[int, int] = (0, 0)  # (epoch, batch) of the next batch training will take
        self._resume: tuple[int, int] | None = None

    @property
    def sampler(self) -> ResumableLoader:
        return self  # Lightning calls ``sampler.set_epoch`` at every epoch start

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batches_per_epoch(len(self.dataset), self.batch_size, dist.world_size())

    def __iter__(self) -> Iterator[Any]:
        epoch, skip = self.epoch, 0
        if self._resume is not None:
            (epoch, skip), self._resume = self._resume, None
            self.epoch = epoch
        yield from seeded_loader(
            self.dataset, batch_size=self.batch_size, seed=self.seed, epoch=epoch, skip_batches=skip,
            num_workers=self.num_workers, rank=dist.rank(), world_size=dist.world_size(),
        )

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.next_batch[0], "batch": self.next_batch[1]}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.resume_at(int(state["epoch"]), int(state["batch"]))

    def resume_at(self, epoch: int, batch: int) -> None:
        self.next_batch = self._resume = (epoch, batch)
        self.epoch = epoch


class GrdLightning(Callback):
    """The callback (and, as ``.io``, the plugin) that makes a Lightning run resumable (module docstring)."""

    def __init__(
        self,
        checkpoints: RunCheckpoints,
        *,
        pacer: Pacer | None = None,
        shutdown: GracefulShutdown | None = None,
    ) -> None:
        self.checkpoints = checkpoints
        self.io = GrdCheckpointIO(checkpoints)
        self.policy = StopPolicy(pacer=pacer, shutdown=shutdown)
        self.loaders: list[ResumableLoader] = []
        self._rng: dict[str, Any] | None = None  # this rank's RNG state to restore before the next batch
        self._next: tuple[int, int] = (0, 0)
        self._pending = ""  # a stop asked at an epoch's last batch, made at the epoch's end

    def loader(self, dataset: Any, *, batch_size: int, seed: int, num_workers: int = 0) -> ResumableLoader:
        """A ``ResumableLoader`` this callback keeps at the exact position of every checkpoint."""
        made = ResumableLoader(dataset, batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.loaders.append(made)
        return made

    # ------------------------------------------------------------------ setup and resume
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.io.trainer = trainer
        self.io._fresh = {
            "pytorch-lightning_version": importlib.metadata.version("lightning"),
            "state_dict": pl_module.state_dict(),  # loading its own state: a no-op
            "optimizer_states": [],
            "lr_schedulers": [],
            _KEY: {"fresh": True},
        }
        if not self.checkpoints.retention.active:
            self.checkpoints.retention = _retention_of(trainer)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.io._fresh = None
        own = checkpoint.get(_KEY)
        if not isinstance(own, Mapping) or own.get("fresh"):
            return
        _say_what_resuming_does(trainer, checkpoint, self.checkpoints.url)
        ranks = own.get("rng_by_rank")
        rank = dist.rank()
        self._rng = ranks[rank] if isinstance(ranks, list) and len(ranks) > rank else own.get("rng")
        epoch, batch = own.get("position", (0, 0))
        self._next = (int(epoch), int(batch))
        for made in self.loaders:
            made.resume_at(*self._next)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        rng = capture_rng_state()  # every rank builds the checkpoint; rank 0 writes it
        checkpoint[_KEY] = {
            "rng": rng,
            "rng_by_rank": dist.gather(rng) if dist.active() else [rng],
            "position": list(self._next),
            "metrics": scalar_metrics(trainer.callback_metrics),
        }

    # ------------------------------------------------------------------ training
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.policy.install()  # after Lightning registered its own SIGTERM handler: ours comes first
        combined = getattr(trainer.fit_loop, "_combined_loader", None)
        for found in getattr(combined, "flattened", []):
            if isinstance(found, ResumableLoader) and found not in self.loaders:
                self.loaders.append(found)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._rng is not None:  # the first batch after a resume: nothing may draw after this
            restore_rng_state(self._rng)
            self._rng = None
            self.policy.step_started()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.policy.step_ended()
        epoch = trainer.current_epoch
        done = batch_idx + 1
        self._next = (epoch + 1, 0) if done >= trainer.num_training_batches else (epoch, done)
        for made in self.loaders:
            made.next_batch = self._next
        reason = self.policy.reason()
        if not reason:
            return
        if done >= trainer.num_training_batches:
            # the epoch's last batch: stop at the epoch's end instead, where Lightning's loop state is that
            # of a finished epoch (resuming from a save made here, Lightning restarts the next resumed
            # epoch's batch count at 0)
            self._pending = reason
            return
        self._stop(trainer, reason)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:
            self._stop(trainer, self._pending, epoch_end=True)

    def _stop(self, trainer: pl.Trainer, reason: str, *, epoch_end: bool = False) -> None:
        trainer.save_checkpoint(f"grd-stop-step={trainer.global_step}.ckpt")  # every rank: a collective
        self.policy.save_took(self.io.last_save_s)
        url = dist.broadcast(self.io.last_url)
        _log_the_row_lightning_logs_next(trainer, epoch_end=epoch_end)
        raise self.policy.stopped(reason, global_step=trainer.global_step, checkpoint_url=url)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.policy.uninstall()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.policy.uninstall()

    def state_dict(self) -> dict[str, Any]:
        return {}


def _retention_of(trainer: pl.Trainer) -> RetentionPolicy:
    """The store retention that keeps what the first ModelCheckpoint would (its top-k best, plus the last)."""
    callback = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)), None)
    if callback is None or callback.save_top_k < 0:
        return RetentionPolicy()
    if callback.monitor is None:
        return RetentionPolicy(keep_last=max(1, callback.save_top_k))
    top_k, monitor = callback.save_top_k, callback.monitor
    if callback.mode == "max":
        return RetentionPolicy(keep_last=1, keep_best=top_k, monitor=monitor, mode="max")
    return RetentionPolicy(keep_last=1, keep_best=top_k, monitor=monitor, mode="min")


def _epochs_done(checkpoint: Mapping[str, Any]) -> int | None:
    """The epochs a Lightning checkpoint finished (``processed``, as Lightning's ``fit_loop.done`` counts)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return None


def _say_what_resuming_does(trainer: pl.Trainer, checkpoint: Mapping[str, Any], run_url: str) -> None:
    """One line: training continues from the loaded checkpoint, or it already reached the Trainer's target."""
    step, done = int(checkpoint.get("global_step", 0)), _epochs_done(checkpoint)
    where = f"{run_url}/step_{step} (global step {step}, {done if done is not None else '?'} epochs done)"
    reached = ""
    if trainer.max_steps not in (None, -1) and step >= trainer.max_steps:
        reached = f"max_steps={trainer.max_steps}"
    elif trainer.max_epochs not in (None, -1) and done is not None and done >= trainer.max_epochs:
        reached = f"max_epochs={trainer.max_epochs}"
    if reached:
        rank_zero_warn(
            f"grd: {where} already reached this run's {reached}: nothing is left to train and fit ends "
            "with that checkpoint's model; to train anew with these settings, give RunCheckpoints a fresh "
            "run prefix"
        )
    else:
        rank_zero_info(f"grd: resuming from {where}: training continues")


def _log_the_row_lightning_logs_next(trainer: pl.Trainer, *, epoch_end: bool) -> None:
    """Give the loggers, now, the row Lightning logs right after the hook a stop raises from: the step's
    ``on_step`` metrics (``update_train_step_metrics``) or the finished epoch's ``on_epoch`` ones."""
    connector = trainer._logger_connector
    try:
        if epoch_end:
            connector.on_epoch_end()
            loop = trainer.fit_loop.epoch_loop
            loop._batches_that_stepped -= 1  # the epoch's metrics go at its last step, as Lightning logs them
            try:
                connector.update_train_epoch_metrics()
            finally:
                loop._batches_that_stepped += 1
        else:
            connector.on_batch_end()
            connector.update_train_step_metrics()
        for logger_ in trainer.loggers:
            logger_.save()
    except Exception:  # the stop's checkpoint is committed; a log row must not turn the stop into a failure
        logger.warning("logging the stop step's metrics failed; the checkpoint is committed", exc_info=True)
