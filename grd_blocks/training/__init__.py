"""Training that resumes: exact continuation after timeouts, SIGTERM and crashes.

A user's loop calls ``ResumableTraining.resume()`` once, ``step_done()`` after each optimizer step and
``epoch_done()`` after each epoch; data comes from ``seeded_loader`` so a resumed epoch re-enters its exact
batch order. See the README section "Training that resumes".
"""

from __future__ import annotations

from grd_blocks.budget.stop_file import mark_budget_stop
from grd_blocks.training.config import TrainConfig
from grd_blocks.training.data import (
    EpochBatchSampler,
    batches_per_epoch,
    epoch_seed,
    make_deterministic,
    seeded_loader,
    synthetic_regression,
)
from grd_blocks.training.leaving import exit_now, install_excepthook
from grd_blocks.training.loop import ResumableTraining
from grd_blocks.training.pacing import DurationEstimate, Pacer
from grd_blocks.training.resume import CheckpointUrl, Position, Resumed, split_checkpoint_url
from grd_blocks.training.shutdown import GracefulShutdown

__all__ = [
    "CheckpointUrl",
    "DurationEstimate",
    "EpochBatchSampler",
    "GracefulShutdown",
    "Pacer",
    "Position",
    "ResumableTraining",
    "Resumed",
    "TrainConfig",
    "batches_per_epoch",
    "epoch_seed",
    "exit_now",
    "install_excepthook",
    "make_deterministic",
    "mark_budget_stop",
    "seeded_loader",
    "split_checkpoint_url",
    "synthetic_regression",
]
