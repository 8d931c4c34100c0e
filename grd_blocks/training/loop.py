"""``ResumableTraining``: the helper a training loop calls at each step and epoch boundary.

Invariants:

* ``resume()`` restores every object passed in ``objects`` (model, optimizer, scheduler, ...) in place and,
  last, the RNG state of this rank (torch, CUDA, numpy, random: dropout included), and returns the position to
  continue at together with the plain values (``values``: numbers, strings, lists, tuples of tensors such as a
  prefetched batch), which cannot be restored in place; nothing that consumes random numbers may run between
  ``resume()`` and the first step. It installs the signal handlers and the exit hook itself, so a
  script-style loop needs no ``with`` block; ``finish()`` (or leaving the ``with``) removes the handlers.
* ``steps_per_epoch=None`` is the step-only mode: positions count global steps only, checkpoints are
  ``step_N``, and the number of steps to run is the caller's business, so it may grow between attempts.
* After ``step_done()`` / ``epoch_done()`` return, the step is counted; they save when a checkpoint is due
  (every epoch, or every ``save_every_steps`` steps) and, when a stop was asked for (SIGTERM, SIGINT,
  ``stop_at_step``) or the deadline is too close for one more step and a save, they save first and then raise
  ``TrainingInterrupted`` (``TrainingTimedOut`` for the deadline, also after grd's warning signal). No
  completed step is ever lost by a stop. Under grd (``GRD_RUN_KEY`` set) the stop then ignores later stop
  signals (``GracefulShutdown.absorb``). Under grd or not, an uncaught ``TrainingInterrupted`` exits at once
  with its code (``leaving.install_excepthook``: 124 deadline, 143 SIGTERM, 130 SIGINT), so a deadline stop
  ends 124 (TIMEOUT) before grd's SIGTERM, never 1 (FAILED) or -15; every rank creates ``GRD_TIMEOUT_FILE``
  first, so a launcher that turns the ranks' 124 into 1 (torchrun) still ends TIMEOUT.
* Distributed (torch.distributed initialized): every rank calls the same methods; ranks agree on stopping with
  an all-reduce of their flags at every boundary, rank 0 alone writes (with every rank's RNG state), and all
  ranks wait at a barrier until the checkpoint is committed. With sharded state (a module holding DTensor
  parameters: FSDP2; or ``sharded_state=True``) every rank writes its shards instead, one commit for all
  (training/sharded.py, checkpoint/sharded.py), and a resume may run on another number of ranks.
* An ``observer`` (rank 0 only) hears of the start/resume, every commit and every finished epoch (after
  that epoch's boundary saved, with its metrics); it is telemetry: whatever it raises is logged and training
  goes on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Protocol

from grd_blocks.budget.stop_file import mark_budget_stop
from grd_blocks.checkpoint import CheckpointRef, RunCheckpoints, capture_rng_state, restore_rng_state
from grd_blocks.errors import ConfigError, TrainingInterrupted, TrainingTimedOut
from grd_blocks.training import dist, sharded
from grd_blocks.training.leaving import install_excepthook, note_stop
from grd_blocks.training.pacing import Pacer
from grd_blocks.training.resume import PARTIAL, CheckpointUrl, Position, Resumed, load_position, newest
from grd_blocks.training.shutdown import GracefulShutdown

logger = logging.getLogger("grd.training")

_REASONS = ("", "preempted", "cancelled", "deadline", "stop_at_step")


class TrainingObserver(Protocol):
    """What a ``ResumableTraining`` reports as it goes (artifacts, events); called on rank 0 only."""

    def started(self, position: Position, *, resumed_url: str | None, steps_per_epoch: int) -> None:
        """``resume()`` finished: training continues at ``position`` (from ``resumed_url``, if any)."""

    def committed(self, ref: CheckpointRef, position: Position, prefix: RunCheckpoints) -> None:
        """Checkpoint ``ref`` (under ``prefix``, this run's or its ``partial/`` child) was committed."""

    def epoch_finished(
        self, position: Position, *, metrics: Mapping[str, float], checkpoint: str | None
    ) -> None:
        """An epoch ended; ``position.epoch`` epochs are done, with ``metrics``; ``checkpoint`` is the URL
        committed at its boundary, or None when none was due (``save_every_steps``)."""


class ResumableTraining:
    """Checkpoint/resume bookkeeping for one training run (see the module docstring for the guarantees)."""

    def __init__(
        self,
        checkpoints: RunCheckpoints | None,
        objects: Mapping[str, Any],
        *,
        steps_per_epoch: int | None,
        save_every_steps: int | None = None,
        pacer: Pacer | None = None,
        shutdown: GracefulShutdown | None = None,
        stop_at_step: int | None = None,
        resume_from: CheckpointUrl | None = None,
        metadata: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: TrainingObserver | None = None,
        sharded_state: bool | None = None,
    ) -> None:
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(
                f"steps_per_epoch={steps_per_epoch} must be >= 1 (give the loader more data), or None for "
                "the step-only mode"
            )
        if save_every_steps is not None and save_every_steps < 1:
            raise ConfigError(
                f"save_every_steps={save_every_steps} must be >= 1, or None to save every epoch"
            )
        self.checkpoints = checkpoints
        self.objects = {key: value for key, value in objects.items() if not _is_value(value)}
        self.values: dict[str, Any] = {key: value for key, value in objects.items() if _is_value(value)}
        self.steps_per_epoch = steps_per_epoch
        self.save_every_steps = save_every_steps
        self.pacer = pacer or Pacer.from_sources()
        self.shutdown = shutdown or GracefulShutdown()
        self.stop_at_step = stop_at_step
        self.resume_from = resume_from
        self.metadata = dict(metadata or {})
        self.clock = clock
        self.observer = observer
        self.sharded = sharded.is_sharded(self.objects) if sharded_state is None else sharded_state
        self.position = Position()
        self.resumed_from: Position | None = None
        self.resumed_url: str | None = None
        self.last_checkpoint_url: str | None = None
        self.saves = 0
        self._boundary_at: float | None = None
        self._saved_at: Position | None = None
        self._entered = False

    # ------------------------------------------------------------------ context
    def __enter__(self) -> ResumableTraining:
        self._entered = True
        self._install()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._entered = False
        self._close()

    def _install(self) -> None:
        self.shutdown.install()
        install_excepthook()

    def _close(self) -> None:
        if self.checkpoints is not None and dist.rank() == 0:
            self.checkpoints.flush()
        self.shutdown.uninstall()

    @property
    def unit(self) -> str:
        return "epoch" if self.save_every_steps is None and self.steps_per_epoch is not None else "step"

    # ------------------------------------------------------------------ resume
    def resume(self) -> Resumed:
        """Restore the newest committed state (see ``_load``); returns the position to continue at and the
        plain ``values`` (as saved, or as passed in when there is no checkpoint yet)."""
        self._install()
        state: dict[str, Any] | None = None
        if self.checkpoints is not None or self.resume_from is not None:
            state, position, url = self._load_sharded() if self.sharded else self._load()
            if state is not None:
                self.position, self.resumed_from, self.resumed_url = position, position, url
                self._saved_at = position
                self._check_compatible(state, url)
                ranks = state.get("rng_by_rank")
                rng = (
                    ranks[dist.rank()]
                    if isinstance(ranks, list) and len(ranks) > dist.rank()
                    else state["rng"]
                )
                self.values.update({key: state[key] for key in self.values if key in state})
                restore_rng_state(rng)
                logger.info(
                    "resumed %s at epoch %d batch %d (global step %d)",
                    url,
                    position.epoch,
                    position.batch,
                    position.global_step,
                )
        self._notify("started", self.position, resumed_url=self.resumed_url,
                     steps_per_epoch=self.steps_per_epoch or 0)
        self._boundary_at = self.clock()
        pos = self.position
        return Resumed(pos.epoch, pos.batch, pos.global_step, values=dict(self.values))

    def _notify(self, what: str, *args: Any, **kwargs: Any) -> None:
        """Tell the observer (rank 0 only); telemetry never stops training, so failures are logged."""
        if self.observer is None or dist.rank() != 0:
            return
        try:
            getattr(self.observer, what)(*args, **kwargs)
        except Exception:
            logger.warning("training observer failed in %s(); training goes on", what, exc_info=True)

    def _choose(self) -> tuple[RunCheckpoints, CheckpointRef, bool] | None:
        """The newest of: this run's own checkpoints and ``resume_from`` (more global steps wins), with
        whether it is the one checkpoint ``resume_from`` names (then exactly that one is loaded).

        So a fork (``resume_from`` another run or one of its checkpoints) starts there, and a retry of that
        fork continues from its own newer progress instead of starting over.
        """
        candidates: list[tuple[int, RunCheckpoints, CheckpointRef]] = []
        pinned: tuple[RunCheckpoints, CheckpointRef] | None = None
        if self.resume_from is not None:
            source = RunCheckpoints.from_url(self.resume_from.run_url, storage_options=self._options())
            if self.resume_from.index is not None:
                unit = self.resume_from.unit or ""
                prefix = source.child(PARTIAL) if unit.startswith("partial:") else source
                kind = unit.split(":")[-1]
                ref = prefix.find(
                    step=self.resume_from.index if kind == "step" else None,
                    epoch=self.resume_from.index if kind == "epoch" else None,
                )
                pinned = (prefix, ref)
            else:
                found = newest(source)
                pinned = found
        if pinned is not None:
            candidates.append((_steps(pinned[1]), *pinned))
        if self.checkpoints is not None:
            own = newest(self.checkpoints)
            if own is not None:
                candidates.append((_steps(own[1]), *own))
        if not candidates:
            return None
        _, prefix, ref = max(candidates, key=lambda item: item[0])
        exact = (pinned is not None and ref is pinned[1] and self.resume_from is not None
                 and self.resume_from.index is not None)
        return prefix, ref, exact

    def _load(self) -> tuple[dict[str, Any] | None, Position, str | None]:
        """Load what ``_choose`` picks into the objects (rank 0 and every rank alike: a full state)."""
        chosen = self._choose()
        if chosen is None:
            return None, Position(), None
        prefix, ref, exact = chosen
        if exact:
            return load_position(prefix, ref, unit=ref.unit, index=ref.index, into=self.objects)
        return load_position(prefix, ref, into=self.objects)

    def _load_sharded(self) -> tuple[dict[str, Any] | None, Position, str | None]:
        """Every rank: what ``_choose`` picks on rank 0 (this run's main or ``partial/`` prefix, or
        ``resume_from``), loaded into the live objects (resharded to this world); its decoded rest, position
        and URL."""
        choice: tuple[str, str | None, str | None, int | None] = ("none", None, None, None)
        own: Exception | None = None
        if dist.rank() == 0:
            try:
                chosen = self._choose()
                if chosen is not None:
                    prefix, ref, exact = chosen
                    choice = ("load", prefix.url, ref.unit if exact else None, ref.index if exact else None)
            except Exception as exc:  # every rank must leave the broadcast: they all raise below
                own, choice = exc, ("error", f"{type(exc).__name__}: {exc}", None, None)
        kind, where, unit, index = dist.broadcast(choice)
        if kind == "error":
            if own is not None:
                raise own
            raise ConfigError(f"rank 0 could not find the checkpoint to resume from: {where}")
        if kind == "none" or where is None:
            return None, Position(), None
        source = RunCheckpoints.from_url(where, storage_options=self._options())
        holder = sharded.state_dict(self.objects, None)
        found = source.load_sharded(holder, step=index if unit == "step" else None,
                                    epoch=index if unit == "epoch" else None)
        if found is None:
            return None, Position(), None
        state = sharded.restore(self.objects, holder, found.url)
        meta = state.get("position")
        position = Position.from_metadata(meta if isinstance(meta, Mapping) else found.metadata, found.url)
        return state, position, found.url

    def _options(self) -> dict[str, Any]:
        return dict(self.checkpoints.storage_options) if self.checkpoints is not None else {}

    def _check_compatible(self, state: Mapping[str, Any], url: str | None) -> None:
        saved = state.get("layout")
        if not isinstance(saved, Mapping):
            return
        mine = self._layout()
        if self.sharded:  # DCP reshards: the world size may change, the data layout may not
            saved = {**saved, "world_size": mine["world_size"]}
        if saved.get("steps_per_epoch") != mine.get("steps_per_epoch") or int(
            saved.get("world_size", mine["world_size"])
        ) != mine["world_size"]:
            raise ConfigError(
                f"checkpoint {url} was written with {dict(saved)} but this run has {mine}; resume with "
                "the same batch size, data size and number of ranks (steps_per_epoch=None on both sides for "
                "the step-only mode), or start a new run key"
            )

    def _layout(self) -> dict[str, int]:
        layout = {"world_size": dist.world_size()}
        if self.steps_per_epoch is not None:  # the step-only mode records none: its target may grow
            layout["steps_per_epoch"] = self.steps_per_epoch
        return layout

    def skip_batches(self, epoch: int) -> int:
        """Batches of ``epoch`` already done (non-zero only in the epoch a checkpoint stopped in)."""
        return self.position.batch if epoch == self.position.epoch else 0

    # ------------------------------------------------------------------ boundaries
    def step_done(self, metrics: Mapping[str, float] | None = None) -> None:
        """Count one finished optimizer step; save if due; if stopping, save and raise."""
        pos = self.position
        self.position = Position(pos.epoch, pos.batch + 1, pos.global_step + 1)
        self._observe_step()
        if self.steps_per_epoch is not None and self.position.batch >= self.steps_per_epoch:
            return  # the epoch's last step: epoch_done() is the boundary that saves and stops
        due = self.save_every_steps is not None and self.position.global_step % self.save_every_steps == 0
        self._boundary(due, metrics)

    def epoch_done(self, metrics: Mapping[str, float] | None = None) -> None:
        """Close the epoch (its last ``step_done`` must have been called); save if due; stop if asked."""
        pos = self.position
        if self.steps_per_epoch is None:
            raise ConfigError(
                "epoch_done() in the step-only mode (steps_per_epoch=None); pass steps_per_epoch to count "
                "epochs, or call step_done() only"
            )
        if pos.batch != self.steps_per_epoch:
            raise ConfigError(
                f"epoch_done() after {pos.batch} of {self.steps_per_epoch} steps of epoch {pos.epoch}; call "
                "step_done() once per optimizer step and epoch_done() after the epoch's last one"
            )
        self.position = Position(pos.epoch + 1, 0, pos.global_step)
        due = self.save_every_steps is None or self.position.global_step % self.save_every_steps == 0
        saves = self.saves
        try:
            self._boundary(due, metrics)
        finally:  # also when the boundary saved and stops: the epoch is done and committed
            saved = self.last_checkpoint_url if self.saves > saves else None
            self._notify("epoch_finished", self.position, metrics=dict(metrics or {}), checkpoint=saved)

    def _observe_step(self) -> None:
        now = self.clock()
        if self._boundary_at is not None:
            self.pacer.step.observe(now - self._boundary_at)
        self._boundary_at = now

    def _stop_code(self) -> int:
        if self.shutdown.requested:
            return _REASONS.index(self.shutdown.reason or "preempted")
        if self.stop_at_step is not None and self.position.global_step == self.stop_at_step:
            return _REASONS.index("stop_at_step")
        if self.pacer.should_stop():
            return _REASONS.index("deadline")
        return 0

    def _boundary(self, due: bool, metrics: Mapping[str, float] | None) -> None:
        stop_code, due_flag = dist.agree_max([self._stop_code(), int(due)])
        if due_flag or stop_code:
            reason = _REASONS[stop_code] if stop_code else "interval"
            self.save(metrics=metrics, reason=reason)
        self._boundary_at = self.clock()  # saving is not part of the next step's time
        if stop_code:
            reason = _REASONS[stop_code]
            if _under_grd():
                self.shutdown.absorb()  # saved: a late SIGTERM must not turn this exit into -15
            if reason == "deadline":
                mark_budget_stop()  # on every rank: a launcher may turn this exit's 124 into 1
            error = TrainingTimedOut if reason == "deadline" else TrainingInterrupted
            detail = self.pacer.describe() if reason == "deadline" else ""
            raise note_stop(error(
                reason,
                global_step=self.position.global_step,
                checkpoint_url=self.last_checkpoint_url,
                detail=detail,
            ))

    def finish(self, metrics: Mapping[str, float] | None = None) -> str | None:
        """Save the final position unless the last checkpoint already holds it; returns its URL."""
        url = self.last_checkpoint_url
        if self._saved_at != self.position:
            url = self.save(metrics=metrics, reason="final")
        if not self._entered:  # resume() installed the handlers of a loop without a ``with`` block
            self._close()
        return url

    # ------------------------------------------------------------------ saving
    def state(self) -> dict[str, Any]:
        """What a checkpoint holds: the objects, this position, the layout and the RNG state(s)."""
        rng = capture_rng_state()
        state: dict[str, Any] = {**self.objects, **self.values}
        state["position"] = self.position.metadata()
        state["layout"] = self._layout()
        state["rng"] = rng
        if dist.active():
            state["rng_by_rank"] = dist.gather(rng)
        return state

    def save(self, *, metrics: Mapping[str, float] | None = None, reason: str = "interval") -> str | None:
        """Commit the current state now (rank 0 writes, every rank waits); returns the checkpoint URL."""
        started = self.clock()
        state = self.state()  # a collective when distributed: every rank must get here
        url: str | None = None
        if self.sharded:
            url = self._save_sharded(state, metrics, reason)
        elif self.checkpoints is not None and dist.rank() == 0:
            pos = self.position
            meta = {**self.metadata, **pos.metadata(), "reason": reason, **self._layout()}
            prefix = self.checkpoints
            if self.unit == "step":
                ref = prefix.save(state, step=pos.global_step, metrics=metrics, metadata=meta)
            elif pos.batch == 0:
                ref = prefix.save(state, epoch=pos.epoch, metrics=metrics, metadata=meta)
            else:
                prefix = self.checkpoints.child(PARTIAL)
                ref = prefix.save(state, step=pos.global_step, metrics=metrics, metadata=meta)
            url = ref.url
            logger.info("saved %s (%s)", url, reason)
            self._notify("committed", ref, pos, prefix)
        if not self.sharded:  # a sharded save is a collective that ends with the same ref on every rank
            url = dist.broadcast(url)
            dist.barrier()
        self.pacer.save.observe(self.clock() - started)
        self.last_checkpoint_url = url
        self._saved_at = self.position
        self.saves += 1
        return url


    def _save_sharded(self, state: dict[str, Any], metrics: Mapping[str, float] | None,
                      reason: str) -> str | None:
        """Every rank writes its shards of ``state`` (sharded.py); one commit for all; the checkpoint URL."""
        if self.checkpoints is None:
            return None
        modules, optimizers, _ = sharded.split(self.objects)
        rest = {key: value for key, value in state.items() if key not in modules and key not in optimizers}
        payload = sharded.state_dict(self.objects, rest)
        pos = self.position
        meta = {**self.metadata, **pos.metadata(), "reason": reason, **self._layout()}
        prefix = self.checkpoints
        if self.unit == "step":
            ref = prefix.save_sharded(payload, step=pos.global_step, metrics=metrics, metadata=meta)
        elif pos.batch == 0:
            ref = prefix.save_sharded(payload, epoch=pos.epoch, metrics=metrics, metadata=meta)
        else:
            prefix = self.checkpoints.child(PARTIAL)
            ref = prefix.save_sharded(payload, step=pos.global_step, metrics=metrics, metadata=meta)
        if dist.rank() == 0:
            logger.info("saved %s (%s, sharded by %d ranks)", ref.url, reason, dist.world_size())
            self._notify("committed", ref, pos, prefix)
        return ref.url


def _is_value(value: object) -> bool:
    """A plain value that cannot be restored in place (numbers, strings, lists, tuples): ``resume()`` returns
    it in ``values`` instead; modules, optimizers, tensors, arrays and dicts are restored in place."""
    return isinstance(value, int | float | str | bool | list | tuple) or value is None


def _under_grd() -> bool:
    """True when this process is a command grd runs (it set ``GRD_RUN_KEY``)."""
    return bool(os.environ.get("GRD_RUN_KEY"))


def _steps(ref: CheckpointRef) -> int:
    return int(ref.metadata.get("global_step", ref.index))
