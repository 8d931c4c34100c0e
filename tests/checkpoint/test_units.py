"""Layout names, manifests, retention selection and RNG capture, without a store."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from grd_blocks.checkpoint import RunCheckpoints, capture_rng_state, restore_rng_state
from grd_blocks.checkpoint.payload.manifest import LatestPointer, parse_latest
from grd_blocks.checkpoint.refs import CheckpointRef
from grd_blocks.checkpoint.retention import RetentionPolicy, select_deletions
from grd_blocks.checkpoint.storage.layout import parse_dirname, validate_run_key
from grd_blocks.errors import CheckpointCorrupt, CheckpointError, ConfigError


@pytest.mark.parametrize("good", ["a", "run_42", "nightly-2026.11.23", "x" * 128, "..."])
def test_valid_run_keys_pass_unchanged(good: str) -> None:
    assert validate_run_key(good) == good


def test_only_unit_index_dirnames_are_checkpoints() -> None:
    assert parse_dirname("step_3") == ("step", 3) and parse_dirname("epoch_0") == ("epoch", 0)
    assert [parse_dirname(n) for n in ("step_03", "step_-1", ".tmp-step_3-x", "commands", "LATEST.json")] == [
        None
    ] * 5


def test_latest_pointer_round_trips_and_detects_edits() -> None:
    pointer = LatestPointer(unit="step", index=3, dirname="step_3", created_at="t", writer="h:1:1")
    assert parse_latest(pointer.to_bytes(), "L") == pointer
    with pytest.raises(CheckpointCorrupt, match="checksum"):
        parse_latest(pointer.to_bytes().replace(b'"index": 3', b'"index": 4'), "L")


def _ref(index: int, loss: float | None = None) -> CheckpointRef:
    metrics = {} if loss is None else {"loss": loss}
    return CheckpointRef(
        run_key="r", unit="step", index=index, url=f"u/step_{index}", created_at=str(index), metrics=metrics
    )


def test_retention_without_keep_last_deletes_nothing() -> None:
    refs = [_ref(i, 1.0) for i in range(5)]
    assert select_deletions(refs, RetentionPolicy(keep_best=1, monitor="loss")) == []


def test_retention_protects_names_and_ignores_unscored_for_best() -> None:
    refs = [_ref(0, 0.1), _ref(1), _ref(2, 0.5), _ref(3, 0.9)]
    policy = RetentionPolicy(keep_last=1, keep_best=1, monitor="loss")
    assert [r.index for r in select_deletions(refs, policy, protected={"step_1"})] == [2]


@pytest.mark.parametrize(
    "kwargs", [{"keep_last": 0}, {"keep_best": 1}, {"keep_best": -1}, {"mode": "median"}]
)
def test_bad_retention_options_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RetentionPolicy(**kwargs)  # type: ignore[arg-type]


def test_rng_restore_replays_every_generator() -> None:
    gen = np.random.Generator(np.random.PCG64(5))
    mt = np.random.Generator(np.random.MT19937(7))
    state = capture_rng_state(numpy_generators={"pcg": gen, "mt": mt})
    first = (torch.rand(3), random.random(), np.random.rand(), gen.random(), mt.random())
    random.gauss(0, 1)
    restore_rng_state(state, numpy_generators={"pcg": gen, "mt": mt})
    second = (torch.rand(3), random.random(), np.random.rand(), gen.random(), mt.random())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_rng_restore_names_missing_generator() -> None:
    with pytest.raises(CheckpointError, match="'other'"):
        restore_rng_state(capture_rng_state(), numpy_generators={"other": np.random.default_rng()})


def test_from_env_opens_the_command_prefix(tmp_path: object) -> None:
    env = {
        "GRD_CHECKPOINT_URL": f"{tmp_path}/store/run/commands/train.fit",
        "GRD_CHECKPOINT_STORAGE_OPTIONS": "{}",
    }
    run = RunCheckpoints.from_env(env)
    run.save({"a": 1}, step=0)
    assert run.url.endswith("/run/commands/train.fit") and run.load() == {"a": 1}
    with pytest.raises(ConfigError, match="GRD_CHECKPOINT_URL"):
        RunCheckpoints.from_env({})
