"""Hugging Face Trainer (``grd[hf]``): every checkpoint the Trainer writes is committed to grd's store, and a
resume starts from the newest one that verifies.

    grd = GrdTrainerCallback(RunCheckpoints.from_env(default="./checkpoints/my-run"))
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[grd])
    trainer.train(resume_from_checkpoint=grd.resume_from(trainer))

Invariants:

* The Trainer still writes ``{output_dir}/checkpoint-N`` itself (model, optimizer, scheduler, RNG states,
  ``trainer_state.json``). Once it is complete (``on_save``, after the Trainer's last write into it) its files
  are committed, byte for byte, as one store checkpoint ``step_N`` with the store's protocol (payload fsynced
  and checksummed, manifest last, ``LATEST.json`` after it; on S3 manifest-last) and the scalar metrics the
  Trainer logged at step N (a value logged at an earlier step is never attached to a later checkpoint, so
  ``keep_best`` ranks each evaluation once, at the checkpoint it was measured for). The local folder is the
  Trainer's scratch copy; the store is what a resume reads. A save the Trainer makes at the step that ends
  an epoch is committed as it is saved again at the epoch's end, after the epoch's evaluation (the Trainer's
  own folder then holds RNG states from before it, and a resume from it skips that evaluation, so it would
  not continue exactly).
* ``resume_from(trainer)`` writes the newest checkpoint whose every sha256 verifies (a damaged one is skipped
  with a warning, falling back to the one before) into a fresh folder under ``{output_dir}/.grd-resume/``
  and returns its path; ``None`` (a fresh start) when nothing is committed. A half-written local
  ``checkpoint-N`` (a crash inside the Trainer's save) is never picked, which ``resume_from_checkpoint=True``
  (the highest ``checkpoint-N`` by name) would do.
* A resume from a checkpoint that already reached this run's ``max_steps`` (a rerun with fewer epochs or
  steps) trains nothing, as the Trainer does, and says so in one warning naming the fix (a fresh run prefix).
* With ``load_best_model_at_end``, the Trainer's best checkpoint (``best_global_step`` in the resumed
  ``trainer_state.json``) is written from the store next to the resumed one, and the resumed state's
  ``best_model_checkpoint`` points at it: the run ends with the same best model whether or not the local
  ``output_dir`` survived (another machine, a fresh pod). A best step the store no longer holds is a
  warning naming it (the Trainer then ends with the last model).
* Retention is the store's and runs only after a newer commit, never deleting the latest or the best.
  Without a retention of its own the store takes the Trainer's: ``save_total_limit`` -> ``keep_last``;
  ``metric_for_best_model`` -> ``keep_best=1`` by ``eval_<metric>`` (``greater_is_better`` -> max). The
  Trainer's rotation (``save_total_limit``) prunes only its scratch folders.
* The Trainer resumes mid-epoch exactly (its sampler is seeded per epoch, the resumed epoch's first batches
  are skipped and the RNG states restored after them), so a resumed run's weights equal an uninterrupted
  run's bit for bit, after a fallback past a damaged checkpoint too.
* SIGTERM, SIGINT, grd's warning signal (``GRD_WARN_SIGNAL``) and the ``GRD_TIME_LEFT_S`` budget (a step and
  a save must still fit) make the Trainer save after the current optimizer step (after the epoch's end and
  its evaluation when that step ends an epoch), commit, and raise ``TrainingInterrupted`` out of
  ``trainer.train``; uncaught, the process exits 124 (deadline), 143 or 130 with the checkpoint committed.
  The handlers are installed when training begins; a request at the run's last step lets the run finish.
* With several processes (torchrun), every rank stops at the same step; after a barrier rank 0 commits the
  folder (``output_dir`` must then be one folder every rank writes into, as the Trainer's own resume needs).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.checkpoint.retention import RetentionPolicy
from grd_blocks.errors import CheckpointCorrupt, CheckpointNotFound
from grd_blocks.integrations._stopping import StopPolicy
from grd_blocks.integrations._values import scalar_metrics
from grd_blocks.training import dist
from grd_blocks.training.pacing import Pacer
from grd_blocks.training.shutdown import GracefulShutdown

__all__ = ["GrdTrainerCallback"]

logger = logging.getLogger("grd.integrations.huggingface")

def _say(message: str, *args: object) -> None:
    """One line of what training does (starts fresh, resumes): at INFO on grd's logger, and on stderr (rank
    0, prefixed ``grd:``) when the script configured no logging at all, which would drop an INFO line
    (Lightning's console shows its own lines the same way)."""
    logger.info(message, *args)
    if not logger.hasHandlers() and dist.rank() == 0:
        print("grd: " + message % args, file=sys.stderr, flush=True)


_KEY = "hf_checkpoint"  # the state key: {"folder": "checkpoint-N", "global_step": N, "files": {path: bytes}}
RESUME_DIR = ".grd-resume"
TRAINER_STATE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME


def _as_tensor(data: bytes) -> torch.Tensor:
    """A file's bytes as a uint8 tensor (plain data a weights-only load reads back)."""
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def folder_state(folder: Path, global_step: int) -> dict[str, Any]:
    """The store state of a Trainer checkpoint folder: every file under it, byte for byte."""
    files = {
        path.relative_to(folder).as_posix(): _as_tensor(path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    return {_KEY: {"folder": folder.name, "global_step": global_step, "files": files}}


def write_folder(state: Mapping[str, Any], parent: Path) -> Path:
    """Write a loaded ``folder_state`` under ``parent`` (staged, then renamed into place); its path."""
    own = state.get(_KEY)
    if not isinstance(own, Mapping) or not isinstance(own.get("files"), Mapping):
        raise CheckpointCorrupt(f"the checkpoint holds no {_KEY!r} (not written by GrdTrainerCallback)")
    target = parent / str(own["folder"])
    staging = parent / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, tensor in own["files"].items():
        relative = Path(str(name))
        if relative.is_absolute() or ".." in relative.parts:
            raise CheckpointCorrupt(f"the checkpoint names a file outside its folder: {name!r}")
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tensor.numpy().tobytes())
    staging.rename(target)
    return target


class GrdTrainerCallback(TrainerCallback):
    """A ``TrainerCallback`` that commits every checkpoint to grd's store and saves and stops in time."""

    def __init__(
        self,
        checkpoints: RunCheckpoints,
        *,
        pacer: Pacer | None = None,
        shutdown: GracefulShutdown | None = None,
    ) -> None:
        self.checkpoints = checkpoints
        self.policy = StopPolicy(pacer=pacer, shutdown=shutdown)
        self.last_url: str | None = None
        self.metrics: dict[str, float] = {}  # the latest value of every scalar the Trainer logged
        self.logged_at: dict[str, int] = {}  # the global step each of those values was logged at
        self._stopping = ""  # the reason of a stop asked for
        self._armed = False  # the next save is the stop's (not one the Trainer makes before the epoch's end)
        self._epoch_ended = False  # on_epoch_end ran: the epoch's evaluation is over
        self._resave = False  # the Trainer saved at the step that ended the epoch: commit its epoch-end save
        self._step_end: float | None = None  # when the last optimizer step ended (its save follows)
        self._resumed: str | None = None  # the URL of the checkpoint resume_from wrote out

    # ------------------------------------------------------------------ resume
    def resume_from(self, trainer: Trainer) -> str | None:
        """The local path of the newest verified checkpoint for ``trainer.train(resume_from_checkpoint=...)``,
        written under ``{output_dir}/.grd-resume/rank-{rank}/``; None when nothing is committed yet.

        Every rank calls it (rank 0 chooses, the others load the same step)."""
        chosen: int | None = None
        state: dict[str, Any] | None = None
        if dist.rank() == 0:
            state = self.checkpoints.load()
            own = state.get(_KEY) if state is not None else None
            chosen = int(own["global_step"]) if isinstance(own, Mapping) else None
            if state is not None and chosen is None:
                raise CheckpointCorrupt(
                    f"the newest checkpoint under {self.checkpoints.url} was not written by "
                    "GrdTrainerCallback; give the Trainer a run prefix of its own"
                )
        chosen = dist.broadcast(chosen)
        if chosen is None:
            _say("no committed checkpoint under %s yet: training starts fresh", self.checkpoints.url)
            return None
        if state is None:
            state = self.checkpoints.load(step=chosen)
            assert state is not None  # load(step=...) raises when it is missing
        parent = Path(str(trainer.args.output_dir)) / RESUME_DIR / f"rank-{dist.rank()}"
        shutil.rmtree(parent, ignore_errors=True)
        parent.mkdir(parents=True)
        folder = write_folder(state, parent)
        _say("resuming from %s (step %d), written to %s: training continues", self.checkpoints.url, chosen,
             folder)
        self._resumed = f"{self.checkpoints.url}/step_{chosen}"
        if trainer.args.load_best_model_at_end:
            self._restore_best(folder, chosen)
        return str(folder)

    def _restore_best(self, folder: Path, chosen: int) -> None:
        """Write the Trainer's best checkpoint from the store beside ``folder`` (the resumed one) and point
        the resumed ``trainer_state.json`` at it: ``load_best_model_at_end`` never needs the local
        ``output_dir``."""
        state_file = folder / TRAINER_STATE
        if not state_file.is_file():
            return
        saved = json.loads(state_file.read_text())
        best_step, recorded = saved.get("best_global_step"), saved.get("best_model_checkpoint")
        if not isinstance(best_step, int) or best_step <= 0:
            return  # no evaluation has found a best yet
        if best_step == chosen:
            best = folder
        else:
            try:
                best_state = self.checkpoints.load(step=best_step)
            except (CheckpointNotFound, CheckpointCorrupt) as error:
                if recorded is not None:
                    logger.warning(
                        "the Trainer's best checkpoint step_%d (best_metric %s) cannot be read from %s: %s; "
                        "load_best_model_at_end will end with the last model. Keep the best in the store "
                        "(no store retention, or one with keep_best) or start a fresh run prefix",
                        best_step, saved.get("best_metric"), self.checkpoints.url, error,
                    )
                return
            assert best_state is not None  # load(step=...) raises when it is missing
            best = write_folder(best_state, folder.parent)
        saved["best_model_checkpoint"] = str(best)
        state_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        logger.info("the Trainer's best checkpoint (step %d) written from %s to %s", best_step,
                    self.checkpoints.url, best)

    # ------------------------------------------------------------------ training
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not self.checkpoints.retention.active:
            self.checkpoints.retention = retention_of(args)
        if self._resumed is not None and state.max_steps > 0 and state.global_step >= state.max_steps:
            logger.warning(
                "grd: %s (global step %d) already reached this run's max_steps=%d (num_train_epochs=%s, "
                "max_steps=%s): nothing is left to train and train() ends with that checkpoint's model; to "
                "train anew with these settings, give RunCheckpoints a fresh run prefix",
                self._resumed, state.global_step, state.max_steps, args.num_train_epochs, args.max_steps,
            )
        self.policy.install()

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._epoch_ended = False

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.policy.step_ended()
        self._step_end = time.monotonic()
        reason = self.policy.reason()  # every rank, every step: ranks agree on the step to stop at
        if not reason or state.global_step >= state.max_steps:
            return  # the last step: the run ends here anyway
        self._stopping = reason
        if float(state.epoch or 0.0).is_integer():
            return  # this step ended an epoch: save at the epoch's end, after its evaluation (on_epoch_end)
        self._arm(control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._epoch_ended = True
        if self._resave:
            control.should_save = True
        if self._stopping:
            self._arm(control)

    def _arm(self, control: TrainerControl) -> None:
        control.should_save = control.should_training_stop = True
        self._armed = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        values = scalar_metrics(logs or {})
        self.metrics.update(values)
        self.logged_at.update(dict.fromkeys(values, state.global_step))

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if float(state.epoch or 0.0).is_integer() and not self._epoch_ended and not self._armed:
            # the Trainer saves at the step that ends an epoch before the epoch's end (its evaluation draws
            # random numbers; a resume from this folder would skip it): commit the save made after it instead
            self._resave = True
            return
        self._resave = False
        folder = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        dist.barrier()  # every rank has written its files (RNG state per rank) into the folder
        url: str | None = None
        if state.is_world_process_zero:
            ref = self.checkpoints.save(
                folder_state(folder, state.global_step),
                step=state.global_step,
                metrics=self.metrics_at(state.global_step),
                metadata={"hf_folder": folder.name, "epoch": state.epoch, "global_step": state.global_step},
            )
            url = ref.url
            logger.info("saved %s (Trainer folder %s)", ref.url, folder)
        self.last_url = url = dist.broadcast(url)
        if self._step_end is not None:  # the Trainer's own writes, an evaluation and the commit
            self.policy.save_took(time.monotonic() - self._step_end)
        self.policy.step_started()
        if self._armed:
            reason, self._stopping, self._armed = self._stopping, "", False
            raise self.policy.stopped(reason, global_step=state.global_step, checkpoint_url=url)

    def metrics_at(self, global_step: int) -> dict[str, float]:
        """The scalars the Trainer logged at ``global_step`` (what a checkpoint of that step carries)."""
        return {key: value for key, value in self.metrics.items() if self.logged_at.get(key) == global_step}

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.policy.uninstall()


def retention_of(args: TrainingArguments) -> RetentionPolicy:
    """The store retention that keeps what the Trainer's ``save_total_limit`` would (and the best)."""
    limit = args.save_total_limit
    if not limit or limit < 1:
        return RetentionPolicy()
    metric = args.metric_for_best_model
    if not metric:
        return RetentionPolicy(keep_last=limit)
    monitor = metric if metric.startswith("eval_") else f"eval_{metric}"
    if args.greater_is_better:
        return RetentionPolicy(keep_last=limit, keep_best=1, monitor=monitor, mode="max")
    return RetentionPolicy(keep_last=limit, keep_best=1, monitor=monitor, mode="min")
