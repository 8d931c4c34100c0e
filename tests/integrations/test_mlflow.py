"""MLflow: with a run active, each commit logs its metrics at its step, its URL and its manifest; read back
with MLflow's own client from a local file store (independent of grd's bookkeeping)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.integrations import mlflow as grd_mlflow


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this
    monkeypatch.delenv("GRD_TRACKING", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)


def test_each_commit_logs_its_metrics_at_its_step_its_url_and_its_manifest(
    tmp_path: Path, tracking: str
) -> None:
    run = RunCheckpoints.from_url(str(tmp_path / "ck"))
    state = {"w": torch.arange(4.0)}
    with mlflow.start_run() as active:
        run.save(state, step=3, metrics={"loss": 0.5, "acc": 0.75})
        run.save_async(state, step=7, metrics={"loss": 0.25})  # committed in a background thread
        run.flush()
        run.save(state, epoch=2, metrics={"loss": 0.125})
    run.save(state, step=9, metrics={"loss": 0.0625})  # no run active: nothing recorded
    run_id = active.info.run_id

    client = MlflowClient(tracking_uri=tracking)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert history == [(2, 0.125), (3, 0.5), (7, 0.25)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "acc")] == [(3, 0.75)]
    listed = {info.path for info in client.list_artifacts(run_id, "grd/checkpoints")}
    assert listed == {"grd/checkpoints/step_3", "grd/checkpoints/step_7", "grd/checkpoints/epoch_2"}
    for name in ("step_3", "step_7", "epoch_2"):
        got = Path(client.download_artifacts(run_id, f"grd/checkpoints/{name}", str(tmp_path / "dl")))
        assert (got / "MANIFEST.json").read_bytes() == (tmp_path / "ck" / name / "MANIFEST.json").read_bytes()
        record = mlflow.artifacts.load_dict((got / "checkpoint.json").as_uri())
        assert record["url"] == run.find(**{name.split("_")[0]: int(name.split("_")[1])}).url
    tags = client.get_run(run_id).data.tags
    assert tags["grd.checkpoint_url"] == run.find(epoch=2).url
    assert tags["grd.run_url"] == run.url


def test_a_tracker_failure_never_fails_the_save(
    tmp_path: Path, tracking: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(grd_mlflow, "record_commit", broken)
    run = RunCheckpoints.from_url(str(tmp_path / "ck"))
    with caplog.at_level(logging.WARNING, logger="grd.checkpoint"), mlflow.start_run():
        ref = run.save({"w": torch.ones(2)}, step=1, metrics={"loss": 1.0})
    assert run.latest() == ref and run.verify(ref) == []
    assert "reporting" in caplog.text and "the checkpoint is committed" in caplog.text


def test_grd_tracking_0_turns_recording_off(
    tmp_path: Path, tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRD_TRACKING", "0")
    with mlflow.start_run() as active:
        run = RunCheckpoints.from_url(str(tmp_path / "ck"))
        run.save({"w": torch.ones(2)}, step=1, metrics={"loss": 1.0})
    client = MlflowClient(tracking_uri=tracking)
    assert client.get_metric_history(active.info.run_id, "loss") == []
    assert client.list_artifacts(active.info.run_id) == []


def test_the_trainers_own_mlflow_run_receives_each_commit(tmp_path: Path, tracking: str) -> None:
    from transformers import Trainer

    from grd_blocks.integrations.huggingface import GrdTrainerCallback
    from tests.integrations import _hf_script

    grd = GrdTrainerCallback(RunCheckpoints.from_url(str(tmp_path / "ck")))
    args = _hf_script.arguments(str(tmp_path / "out"), 1, save_strategy="steps", save_steps=8,
                                report_to=["mlflow"])
    trainer = Trainer(model=_hf_script.tiny_model(), args=args, train_dataset=_hf_script.dataset(),
                      callbacks=[grd])
    try:
        trainer.train(resume_from_checkpoint=grd.resume_from(trainer))
    finally:
        grd.policy.uninstall()
    client = MlflowClient(tracking_uri=tracking)
    (hf_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run_id = hf_run.info.run_id
    listed = {info.path for info in client.list_artifacts(run_id, "grd/checkpoints")}
    assert listed == {"grd/checkpoints/step_8", "grd/checkpoints/step_16"}
    assert hf_run.data.tags["grd.checkpoint_url"] == grd.last_url
    got = Path(client.download_artifacts(run_id, "grd/checkpoints/step_16", str(tmp_path / "dl")))
    record = mlflow.artifacts.load_dict((got / "checkpoint.json").as_uri())
    committed = RunCheckpoints.from_url(str(tmp_path / "ck")).find(step=16)
    assert record["url"] == committed.url and record["metrics"] == committed.metrics
    assert committed.metrics["learning_rate"] > 0  # the Trainer's logged scalars, recorded at the commit
