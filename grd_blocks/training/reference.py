"""The reference training run the ``train`` flow executes: a small MLP on generated data, resumable exactly.

Invariant: ``train_mlp(config, checkpoints)`` called repeatedly on the same checkpoint prefix until it stops
raising ``TrainingInterrupted`` ends with the same weights, bit for bit, as one uninterrupted call: the state
(model, optimizer, position, RNG) is restored by ``ResumableTraining`` and the data order comes from
``seeded_loader``. It is also the template for a user's own loop (see examples/train_mlp.py).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from grd_blocks.budget import Budget
from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.training.config import TrainConfig
from grd_blocks.training.data import (
    batches_per_epoch,
    make_deterministic,
    seeded_loader,
    synthetic_regression,
)
from grd_blocks.training.loop import ResumableTraining, TrainingObserver
from grd_blocks.training.pacing import Pacer
from grd_blocks.training.resume import CheckpointUrl
from grd_blocks.training.shutdown import GracefulShutdown


class MLP(nn.Module):
    """features -> hidden -> ReLU -> dropout -> 1."""

    def __init__(self, features: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def param_digest(module: nn.Module) -> str:
    """sha256 over every parameter and buffer, in order: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def busy_wait(seconds: float) -> None:
    """Spin for ``seconds`` without touching any RNG (a stand-in for real compute in demos and benchmarks)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@dataclass(frozen=True)
class TrainResult:
    """What one completed training run reports."""

    checkpoint_url: str | None
    epochs: int
    global_step: int
    resumed_epoch: int | None
    resumed_step: int | None
    resumed_url: str | None
    final_loss: float
    param_digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build(config: TrainConfig) -> tuple[MLP, torch.optim.Optimizer]:
    """Seed everything, then build the model and optimizer (consumes the global RNG, like a user script)."""
    make_deterministic(config.seed, threads=1)  # the reference numbers are 1-thread ones
    model = MLP(config.features, config.hidden, config.dropout)
    return model, torch.optim.Adam(model.parameters(), lr=config.lr)


def train_mlp(
    config: TrainConfig,
    checkpoints: RunCheckpoints | None,
    *,
    resume_from: CheckpointUrl | None = None,
    budget: Budget | None = None,
    shutdown: GracefulShutdown | None = None,
    model_out: list[nn.Module] | None = None,
    observer: TrainingObserver | None = None,
) -> TrainResult:
    """Train (resuming from the newest checkpoint of ``checkpoints``) until ``config.epochs`` are done.

    Raises ``TrainingInterrupted`` / ``TrainingTimedOut`` after saving when stopped early.
    """
    model, optimizer = build(config)
    dataset = synthetic_regression(config.samples, config.features, seed=config.seed)
    steps = batches_per_epoch(len(dataset), config.batch_size)
    pacer = Pacer.from_sources(
        time_left_s=config.time_left_s, budget=budget, initial_save_s=config.initial_save_s
    )
    training = ResumableTraining(
        checkpoints,
        {"model": model, "optimizer": optimizer},
        steps_per_epoch=steps,
        save_every_steps=config.save_every_steps,
        pacer=pacer,
        shutdown=shutdown,
        stop_at_step=config.stop_at_step,
        resume_from=resume_from,
        observer=observer,
    )
    if model_out is not None:
        model_out.append(model)
    loss_value = float("nan")
    with training:
        start = training.resume()
        model.train()
        for epoch in range(start.epoch, config.epochs):
            loader = seeded_loader(
                dataset,
                batch_size=config.batch_size,
                seed=config.seed,
                epoch=epoch,
                skip_batches=training.skip_batches(epoch),
                num_workers=config.num_workers,
            )
            for x, y in loader:
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                loss_value = float(loss.detach())
                if config.step_delay_s:
                    busy_wait(config.step_delay_s)
                training.step_done()
            training.epoch_done(metrics={"loss": loss_value})
        training.finish(metrics={"loss": loss_value})
    resumed = training.resumed_from
    return TrainResult(
        checkpoint_url=training.last_checkpoint_url,
        epochs=training.position.epoch,
        global_step=training.position.global_step,
        resumed_epoch=resumed.epoch if resumed else None,
        resumed_step=resumed.global_step if resumed else None,
        resumed_url=training.resumed_url,
        final_loss=loss_value,
        param_digest=param_digest(model),
    )
