"""A 10-epoch run whose every attempt may use only ~3 epochs' time finishes across attempts, bit-identical."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import TrainingTimedOut
from grd_blocks.training import TrainConfig
from grd_blocks.training.reference import train_mlp

pytestmark = pytest.mark.pristine_process  # in-process RNG continuity, bit for bit

STEPS_PER_EPOCH = 8
DELAY = 0.02


def test_deadline_sliced_run_finishes_with_uninterrupted_weights(tmp_path: Path) -> None:
    base = TrainConfig(epochs=10, samples=128, batch_size=16, step_delay_s=DELAY, initial_save_s=0.05)
    started = time.perf_counter()
    full = train_mlp(base, RunCheckpoints.from_url(str(tmp_path / "full")))
    epoch_s = (time.perf_counter() - started) / 10  # measured, so the slice is ~3 epochs on this machine
    sliced = base.model_copy(update={"time_left_s": 3 * epoch_s})
    prefix = RunCheckpoints.from_url(str(tmp_path / "sliced"))
    stops: list[int] = []
    for _attempt in range(40):
        try:
            result = train_mlp(sliced, prefix)
            break
        except TrainingTimedOut as exc:
            assert exc.exit_code == 124 and exc.checkpoint_url is not None
            assert not stops or exc.global_step > stops[-1], "an attempt made no progress"
            stops.append(exc.global_step)
    else:
        raise AssertionError(f"not finished after 40 attempts; stopped at steps {stops}")
    assert stops, "the first attempt should have run out of time"
    assert result.resumed_step == stops[-1]  # the retry continued exactly where the last attempt saved
    assert result.global_step == 10 * STEPS_PER_EPOCH
    assert result.param_digest == full.param_digest
