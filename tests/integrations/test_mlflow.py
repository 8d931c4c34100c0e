"""MLflow: with a run active, each commit logs one ``grd.checkpoint`` point at its step, its URL and its
manifest, and never a point under the user's keys; a run stopped by its budget ends KILLED tagged
grd.status=TIMEOUT, and one whose process was killed is closed KILLED by the next attempt. Read back with
MLflow's own client from a local file store (independent of grd's bookkeeping); the status tests run a real
Lightning script with an MLFlowLogger as separate processes."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.integrations import mlflow as grd_mlflow
from tests.training import _script


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this
    monkeypatch.delenv("GRD_TRACKING", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)
    grd_mlflow._recorded.clear()  # this process's runs live in tmp_path: nothing to close at pytest's exit
    grd_mlflow._swept.clear()


def test_each_commit_logs_one_grd_point_at_its_step_its_url_and_its_manifest_and_no_user_key(
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
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "grd.checkpoint"))
    assert history == [(2, 2.0), (3, 3.0), (7, 7.0)]
    assert set(client.get_run(run_id).data.metrics) == {"grd.checkpoint"}  # the user's keys stay the user's
    listed = {info.path for info in client.list_artifacts(run_id, "grd/checkpoints")}
    assert listed == {"grd/checkpoints/step_3", "grd/checkpoints/step_7", "grd/checkpoints/epoch_2"}
    for name in ("step_3", "step_7", "epoch_2"):
        got = Path(client.download_artifacts(run_id, f"grd/checkpoints/{name}", str(tmp_path / "dl")))
        assert (got / "MANIFEST.json").read_bytes() == (tmp_path / "ck" / name / "MANIFEST.json").read_bytes()
        record = mlflow.artifacts.load_dict((got / "checkpoint.json").as_uri())
        committed = run.find(**{name.split("_")[0]: int(name.split("_")[1])})
        assert record["url"] == committed.url and record["metrics"] == committed.metrics  # metrics live here
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
    assert client.get_metric_history(active.info.run_id, "grd.checkpoint") == []
    assert client.list_artifacts(active.info.run_id) == []


def test_the_trainers_own_mlflow_run_receives_each_commit_and_its_charts_only_the_trainers_points(
    tmp_path: Path, tracking: str
) -> None:
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
    # every step's loss once, as the Trainer logged it (logging_steps=1); grd drew nothing under its keys
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(1, 17))
    assert sorted(m.step for m in client.get_metric_history(run_id, "grd.checkpoint")) == [8, 16]


# ---------------------------------------------------------------------- run status, real processes

LIGHTNING = Path(__file__).with_name("_lightning_script.py")


def _attempt_runs(client: MlflowClient) -> list[mlflow.entities.Run]:
    """The runs of the Lightning script's experiment, one per attempt, oldest first."""
    experiment = client.get_experiment_by_name("grd-test")
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.torch_procs
def test_a_budget_stop_ends_killed_with_grd_status_timeout_and_a_killed_attempts_run_is_closed_by_the_next(
    tmp_path: Path, tracking: str
) -> None:
    env = {"CK": str(tmp_path / "ck"), "STEPS_LOG": str(tmp_path / "log"), "EPOCHS": "2", "EVERY": "4",
           "MLFLOW_URI": tracking, "MLFLOW_ALLOW_FILE_STORE": "true"}
    client = MlflowClient(tracking_uri=tracking)
    # attempt 1: SIGKILL after a commit; MLflow alone leaves its run RUNNING
    proc = _script.start([], script=LIGHTNING, **env, STEP_DELAY="0.05")
    try:
        _script.wait_for_steps(proc, tmp_path / "log", 6)
        proc.send_signal(signal.SIGKILL)
        rc, _ = _script.finish(proc)
    finally:
        _script.stop(proc)
    assert rc == -signal.SIGKILL
    (killed,) = _attempt_runs(client)
    assert killed.info.status == "RUNNING"
    # attempt 2: its budget ends mid epoch (exit 124); Lightning and the with block mark it FAILED on the way
    # out, grd's exit says what happened; its first commit closed attempt 1's run
    rc, out = _script.run([], script=LIGHTNING, **env, STEP_DELAY="0.3", GRD_TIME_LEFT_S="4")
    assert rc == 124 and "training stopped (deadline)" in out, out
    # attempt 3 runs to the end
    rc, out = _script.run([], script=LIGHTNING, **env)
    assert rc == 0, out
    runs = _attempt_runs(client)
    assert [(r.info.status, r.data.tags.get("grd.status")) for r in runs] == [
        ("KILLED", "KILLED"), ("KILLED", "TIMEOUT"), ("FINISHED", None)]
    for r in runs:  # each step's loss once, as Lightning logged it: grd adds no point under the user's keys
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
        assert steps and len(steps) == len(set(steps)), r.info.run_id
        assert {key for key in r.data.metrics if key.startswith("grd.")} <= {"grd.checkpoint"}
