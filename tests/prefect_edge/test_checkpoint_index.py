"""The checkpoint index and progress publisher: rows from real checkpoints; telemetry never stops training."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from grd_blocks.checkpoint import CheckpointRef, RunCheckpoints
from grd_blocks.prefect_edge.artifacts import checkpoint_index_key, progress_artifact_key
from grd_blocks.prefect_edge.checkpoint_index import (
    TrainingArtifacts,
    format_size,
    index_row,
    manifest_checksum,
)
from grd_blocks.training import TrainConfig
from grd_blocks.training.reference import train_mlp
from grd_blocks.training.resume import Position

BASE = {"epochs": 2, "samples": 64, "batch_size": 16}  # 4 steps per epoch


class Exploding:
    """An observer whose every callback raises."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def started(self, position: Position, *, resumed_url: str | None, steps_per_epoch: int) -> None:
        self.calls.append("started")
        raise RuntimeError("observer down")

    def committed(self, ref: CheckpointRef, position: Position, prefix: RunCheckpoints) -> None:
        self.calls.append("committed")
        raise RuntimeError("observer down")

    def epoch_finished(self, position: Position, *, metrics: dict[str, float],
                       checkpoint: str | None) -> None:
        self.calls.append("epoch_finished")
        raise RuntimeError("observer down")


def test_artifact_keys_follow_prefect_key_rules_and_stay_distinct() -> None:
    assert checkpoint_index_key("3f2a-b") == "grd-checkpoints-3f2a-b"
    assert progress_artifact_key("nightly") == "grd-progress-nightly"
    upper, dotted = checkpoint_index_key("Run_A"), checkpoint_index_key("run.a")
    assert upper != dotted
    for key in (upper, dotted):
        assert key.startswith("grd-checkpoints-run-a-") and key == key.lower()
        assert set(key) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


def test_index_row_carries_the_manifest_checksum_size_and_metrics(tmp_path: Path) -> None:
    prefix = RunCheckpoints.from_url(str(tmp_path / "r1"))
    ref = prefix.save({"w": [1, 2, 3]}, epoch=1, metrics={"loss": 0.25},
                      metadata={"epoch": 1, "batch": 0, "global_step": 4})
    manifest = (tmp_path / "r1" / "epoch_1" / "MANIFEST.json").read_bytes()
    row = index_row(ref, manifest_checksum(prefix, ref))
    assert row["checksum"] == hashlib.sha256(manifest).hexdigest()[:12]
    assert (row["checkpoint"], row["epoch"], row["step"], row["metrics"]) == ("epoch_1", 1, 4, "loss=0.25")
    assert row["size"] == format_size(ref.size_bytes) and row["url"] == ref.url
    assert format_size(5300) == "5.2 KiB" and format_size(12) == "12 B"


def test_a_failing_observer_never_stops_training(tmp_path: Path) -> None:
    observer = Exploding()
    result = train_mlp(TrainConfig(**BASE), RunCheckpoints.from_url(str(tmp_path / "r")), observer=observer)
    assert result.global_step == 8 and result.epochs == 2
    assert observer.calls == ["started", "committed", "epoch_finished", "committed", "epoch_finished"]


@flow(name="grd-index-rejected")
def train_with_rejected_artifacts(store: str) -> dict[str, Any]:
    checkpoints = RunCheckpoints.from_url(store)
    observer = TrainingArtifacts("rejected", checkpoints, target_epochs=2)
    observer.index_key = observer.progress_key = "Not A Valid Key!"  # Prefect refuses both artifacts
    result = train_mlp(TrainConfig(**BASE), checkpoints, observer=observer)
    return {"global_step": result.global_step, "writes": observer.index_writes, "rows": len(observer.table())}


def test_artifacts_prefect_refuses_lose_the_artifacts_not_the_training(
    prefect_api: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = train_with_rejected_artifacts(str(tmp_path / "rejected"))
    assert out == {"global_step": 8, "writes": 0, "rows": 2}
    assert "could not publish the progress artifact of run rejected" in caplog.text
    assert "could not publish the index artifact of run rejected" in caplog.text


def test_outside_a_flow_run_nothing_is_published_and_training_runs(tmp_path: Path) -> None:
    checkpoints = RunCheckpoints.from_url(str(tmp_path / "plain"))
    observer = TrainingArtifacts("plain", checkpoints, target_epochs=2)
    result = train_mlp(TrainConfig(**BASE), checkpoints, observer=observer)
    assert result.global_step == 8 and observer.index_writes == 0 and observer.progress_id is None
    assert [r["checkpoint"] for r in observer.table()] == ["epoch_1", "epoch_2"]


@pytest.mark.parametrize("epochs_done, percent", [(0, 0.0), (1, 33.3), (3, 100.0), (4, 100.0)])
def test_progress_is_the_percent_of_target_epochs(tmp_path: Path, epochs_done: int, percent: float) -> None:
    observer = TrainingArtifacts("p", RunCheckpoints.from_url(str(tmp_path / "p")), target_epochs=3)
    assert observer._percent(Position(epochs_done, 0, 0)) == percent
