"""Interrupt-and-resume ends bit-identical to an uninterrupted run: weights, optimizer state and RNG state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import TrainingInterrupted
from grd_blocks.training import TrainConfig
from grd_blocks.training.reference import train_mlp

pytestmark = pytest.mark.pristine_process  # in-process RNG continuity, bit for bit

EPOCHS = 5
BASE = {"epochs": EPOCHS, "samples": 128, "batch_size": 16}  # 8 steps per epoch
STEPS_PER_EPOCH = 8


def _final_state(prefix: RunCheckpoints) -> dict[str, Any]:
    state = prefix.load()
    assert state is not None
    return state


def _assert_identical(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """One uninterrupted 5-epoch run per num_workers value, final checkpoint state."""
    out = {}
    for workers in (0, 2):
        prefix = RunCheckpoints.from_url(str(tmp_path_factory.mktemp("full") / f"w{workers}"))
        train_mlp(TrainConfig(**BASE, num_workers=workers), prefix)
        out[workers] = _final_state(prefix)
    return out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    ("stop_at", "save_every"),
    [(3 * STEPS_PER_EPOCH, None), (3 * STEPS_PER_EPOCH + 5, None), (3 * STEPS_PER_EPOCH + 5, 4)],
    ids=["epoch-boundary", "mid-epoch", "mid-epoch-step-checkpoints"],
)
def test_resume_is_bitwise_identical_to_uninterrupted(
    tmp_path: Path,
    uninterrupted: dict[int, dict[str, Any]],
    workers: int,
    stop_at: int,
    save_every: int | None,
) -> None:
    prefix = RunCheckpoints.from_url(str(tmp_path / "run"))
    config = TrainConfig(**BASE, num_workers=workers, save_every_steps=save_every)
    with pytest.raises(TrainingInterrupted) as stopped:
        train_mlp(config.model_copy(update={"stop_at_step": stop_at}), prefix)
    assert stopped.value.global_step == stop_at
    result = train_mlp(config, prefix)
    assert result.resumed_step == stop_at
    assert (result.resumed_epoch, stop_at % STEPS_PER_EPOCH) == divmod(stop_at, STEPS_PER_EPOCH)
    assert result.global_step == EPOCHS * STEPS_PER_EPOCH
    resumed = _final_state(prefix)
    expected = uninterrupted[workers]
    for key in ("model", "optimizer", "rng", "position"):
        _assert_identical(resumed[key], expected[key], key)


def test_resume_from_checkpoint_url_forks_into_a_new_run(
    tmp_path: Path, uninterrupted: dict[int, dict[str, Any]]
) -> None:
    from grd_blocks.training import split_checkpoint_url

    source = RunCheckpoints.from_url(str(tmp_path / "source"))
    with pytest.raises(TrainingInterrupted):
        train_mlp(TrainConfig(**BASE, stop_at_step=2 * STEPS_PER_EPOCH), source)
    fork = RunCheckpoints.from_url(str(tmp_path / "fork"))
    result = train_mlp(TrainConfig(**BASE), fork, resume_from=split_checkpoint_url(f"{source.url}/epoch_2"))
    assert result.resumed_epoch == 2
    assert result.resumed_url == f"{source.url}/epoch_2"
    _assert_identical(_final_state(fork)["model"], uninterrupted[0]["model"], "model")
