"""How long a training run still needs: the input of long-run approval.

Invariant: ``estimate_remaining`` never trains and never writes; it reads only committed checkpoints. The
seconds per epoch are *measured* when the run (or the run it resumes from) has committed at least two
checkpoints by the same writer process — the median time per global step between consecutive commits,
times the steps of one epoch — else *configured* (``TrainConfig.estimated_epoch_s``), else unknown
(``total_s`` is None). The epochs left are the target minus the work already committed (fractional when the
newest checkpoint is mid-epoch).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from grd_blocks.checkpoint import CheckpointRef, RunCheckpoints
from grd_blocks.training.config import TrainConfig
from grd_blocks.training.resume import PARTIAL, CheckpointUrl, newest

__all__ = ["RunEstimate", "estimate_remaining", "measured_step_s"]

Source = Literal["measured", "configured", "unknown"]


@dataclass(frozen=True)
class RunEstimate:
    """``epochs_left`` epochs at ``epoch_s`` seconds each (``source`` says where that number came from)."""

    epochs_left: float
    epoch_s: float | None
    source: Source

    @property
    def total_s(self) -> float | None:
        """Seconds the run still needs, or None when nothing says how long an epoch takes."""
        return None if self.epoch_s is None else self.epochs_left * self.epoch_s


def _global_step(ref: CheckpointRef) -> int:
    return int(ref.metadata.get("global_step", ref.index))


def _refs(prefix: RunCheckpoints) -> list[CheckpointRef]:
    return [*prefix.checkpoints(), *prefix.child(PARTIAL).checkpoints()]


def measured_step_s(refs: Iterable[CheckpointRef]) -> float | None:
    """Median seconds per global step between consecutive commits of one writer, or None (< 2 commits)."""
    by_writer: dict[str, list[tuple[int, datetime]]] = {}
    for ref in refs:
        by_writer.setdefault(ref.writer or "", []).append(
            (_global_step(ref), datetime.fromisoformat(ref.created_at))
        )
    rates: list[float] = []
    for commits in by_writer.values():
        commits.sort()
        for (step_a, at_a), (step_b, at_b) in itertools.pairwise(commits):
            seconds = (at_b - at_a).total_seconds()
            if step_b > step_a and seconds > 0:
                rates.append(seconds / (step_b - step_a))
    return statistics.median(rates) if rates else None


def estimate_remaining(
    config: TrainConfig,
    checkpoints: RunCheckpoints,
    *,
    steps_per_epoch: int,
    resume_from: CheckpointUrl | None = None,
) -> RunEstimate:
    """The remaining work of ``config`` in run ``checkpoints`` (or ``resume_from``, if that is further)."""
    prefixes = [checkpoints]
    if resume_from is not None:
        options = checkpoints.storage_options
        prefixes.append(RunCheckpoints.from_url(resume_from.run_url, storage_options=options))
    done_steps = 0
    refs: list[CheckpointRef] = []
    for prefix in prefixes:
        found = newest(prefix)
        if found is not None:
            done_steps = max(done_steps, _global_step(found[1]))
            refs.extend(_refs(prefix))
    epochs_left = max(0.0, config.epochs - done_steps / steps_per_epoch)
    step_s = measured_step_s(refs)
    if step_s is not None:
        return RunEstimate(epochs_left, step_s * steps_per_epoch, "measured")
    if config.estimated_epoch_s is not None:
        return RunEstimate(epochs_left, config.estimated_epoch_s, "configured")
    return RunEstimate(epochs_left, None, "unknown")
