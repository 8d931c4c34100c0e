"""The train flow under a real Prefect API: an interrupted attempt is retried and resumes where it saved; its
checkpoints, progress and resumes are visible as artifacts and events; a long run waits for approval."""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import State

from flows.train import train
from grd_blocks.checkpoint import CheckpointEngine, RunCheckpoints
from grd_blocks.errors import TrainingInterrupted, TrainingTimedOut
from grd_blocks.prefect_edge.approval import approve_flow_run
from grd_blocks.prefect_edge.artifacts import checkpoint_index_key, progress_artifact_key
from grd_blocks.prefect_edge.ledger import open_ledger
from grd_blocks.training import TrainConfig
from grd_blocks.training.estimate import RunEstimate, estimate_remaining
from grd_blocks.training.reference import train_mlp
from grd_blocks.training.resume import newest
from tests.prefect_edge._api import (
    artifact_versions,
    paused_run_id,
    read_events,
    run_logs,
    table_rows,
    wait_for,
)

BASE = {"epochs": 3, "samples": 128, "batch_size": 16}  # 8 steps per epoch


def test_flow_retry_resumes_from_the_interrupted_attempt(prefect_api: None, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    config = TrainConfig(**BASE, stop_at_step=12)  # attempt 1 stops mid-epoch 1; the retry never reaches 12
    result = train.with_options(retries=1)(config=config, store=store)
    assert isinstance(result, dict)
    assert (result["resumed_epoch"], result["resumed_step"]) == (1, 12)
    assert result["global_step"] == 24
    (run_key,) = CheckpointEngine(store).list_runs()  # the flow run id: the same across the retry
    assert result["checkpoint_url"].endswith(f"{run_key}/epoch_3")


def test_flow_retry_after_deadline_resumes(prefect_api: None, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    config = TrainConfig(**BASE, step_delay_s=0.05, time_left_s=0.6, initial_save_s=0.05)
    result = train.with_options(retries=20)(config=config, store=store, run_key="sliced-run")
    assert isinstance(result, dict)
    assert result["global_step"] == 24
    assert result["resumed_step"] is not None and result["resumed_step"] > 0


REPRS = ("Traceback", "TrainingTimedOut(", "TrainingInterrupted(", "object at 0x", "NoneType: None")


def test_a_budget_stop_logs_one_line_per_attempt_and_ends_timed_out_with_that_line_as_its_message(
    prefect_api: None, tmp_path: Path
) -> None:
    """Attempt 1 stops at its deadline and Prefect retries it; attempt 2 stops with no retry left: the run
    ends TimedOut. What the run's page shows: one WARNING per stop, no ERROR record, no repr."""
    config = TrainConfig(**BASE, step_delay_s=0.05, time_left_s=0.6, initial_save_s=0.05)
    state = train.with_options(retries=1)(config=config, store=str(tmp_path / "store"), return_state=True)
    assert state.is_failed() and state.name == "TimedOut", state
    message = state.message or ""
    assert message.startswith("training stopped (deadline) after global step "), message
    with pytest.raises(TrainingTimedOut):  # what calling the flow raises: the stop itself
        state.result()
    records = run_logs(state.state_details.flow_run_id, "Finished in state TimedOut")
    stops = [text for level, text in records if level == logging.WARNING and "training stopped" in text]
    assert len(stops) == 2 and stops[-1] == message, stops
    assert [text for level, text in records if level >= logging.ERROR] == []
    assert [text for _, text in records if any(never in text for never in REPRS)] == []


def test_resume_from_a_run_key_continues_that_run(prefect_api: None, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = train.with_options(retries=0)
    with pytest.raises(TrainingInterrupted, match="stop_at_step"):
        first(config=TrainConfig(**BASE, stop_at_step=8), store=store, run_key="nightly")
    result = train(config=TrainConfig(**BASE), store=store, resume_from="nightly")
    assert isinstance(result, dict)
    assert (result["resumed_epoch"], result["resumed_step"]) == (1, 8)


# ---------------------------------------------------------------------------------------- visibility
def test_flow_publishes_one_index_artifact_per_attempt_updated_in_place_with_manifest_checksums(
    prefect_api: None, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    result = train(config=TrainConfig(**BASE), store=str(store), run_key="visible-run")
    assert isinstance(result, dict) and result["global_step"] == 24
    versions = artifact_versions(checkpoint_index_key("visible-run"))
    assert len(versions) == 1  # epochs 1..3 committed: one artifact, updated after each commit
    rows = table_rows(versions[0])
    assert [(r["checkpoint"], r["epoch"], r["step"]) for r in rows] == [
        ("epoch_1", 1, 8), ("epoch_2", 2, 16), ("epoch_3", 3, 24)
    ]
    for row in rows:
        manifest = (store / "visible-run" / row["checkpoint"] / "MANIFEST.json").read_bytes()
        assert row["checksum"] == hashlib.sha256(manifest).hexdigest()[:12]
        assert row["url"].endswith(f"visible-run/{row['checkpoint']}") and row["metrics"].startswith("loss=")
    (progress, *_) = artifact_versions(progress_artifact_key("visible-run"))
    assert float(progress.data) == 100.0
    committed = read_events("visible-run", "grd.checkpoint.committed", 3)
    assert sorted(e.payload["index"] for e in committed) == [1, 2, 3]
    assert all(e.related and e.related[0].role == "flow-run" for e in committed)


def test_retry_emits_resumed_and_the_index_keeps_the_first_attempts_checkpoints(
    prefect_api: None, tmp_path: Path
) -> None:
    store = str(tmp_path / "store")
    config = TrainConfig(**BASE, stop_at_step=12)
    train.with_options(retries=1)(config=config, store=store, run_key="retried-visible")
    (resumed,) = read_events("retried-visible", "grd.run.resumed", 1)
    assert resumed.payload["attempt"] == 2 and resumed.payload["global_step"] == 12
    assert resumed.payload["checkpoint_url"].endswith("retried-visible/partial/step_12")
    versions = artifact_versions(checkpoint_index_key("retried-visible"))
    assert len(versions) == 2  # one artifact per attempt, one key for the run
    rows = table_rows(versions[0])
    assert [r["checkpoint"] for r in rows] == ["epoch_1", "partial/step_12", "epoch_2", "epoch_3"]


def test_the_run_log_has_a_line_per_epoch_and_the_index_follows_the_stores_retention(
    prefect_api: None, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from grd_blocks.prefect_edge.block import CheckpointStore

    block = f"keep-one-{uuid.uuid4().hex[:6]}"
    CheckpointStore(url=str(tmp_path / "store"), keep_last=1).save(block)
    state = train(config=TrainConfig(**BASE), store=block, run_key="kept-one", return_state=True)
    assert state.is_completed()
    assert [p.name for p in (tmp_path / "store" / "kept-one").glob("epoch_*")] == ["epoch_3"]
    (latest, *_) = artifact_versions(checkpoint_index_key("kept-one"))
    assert [r["checkpoint"] for r in table_rows(latest)] == ["epoch_3"]  # what retention left

    def lines() -> list[str]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        text = [log.message for log in logs]
        return text if sum("epoch " in line and "checkpoint committed" in line for line in text) == 3 else []

    text = wait_for(lines, "three epoch lines in the run's logs")  # logs reach the API in batches
    assert any("no checkpoint in" in line and "starting at epoch 0" in line for line in text), text
    epoch_2 = next(line for line in text if line.startswith("epoch 2/3"))
    assert "loss=" in epoch_2 and "checkpoint committed: " in epoch_2 and "kept-one/epoch_2" in epoch_2


# ---------------------------------------------------------------------------------------- approval
def test_auto_approve_runs_a_long_estimate_with_the_estimate_as_limit(
    prefect_api: None, tmp_path: Path
) -> None:
    store = str(tmp_path / "store")
    config = TrainConfig(**BASE, estimated_epoch_s=60)  # 3 epochs x 60 s = 180 s > the 1 min budget
    result = train(config=config, store=store, run_key="auto-ok", approval_budget="1m", auto_approve=True)
    assert isinstance(result, dict) and result["global_step"] == 24
    records = open_ledger(store, "auto-ok").records()
    assert [(r.kind, r.who, r.limit_s) for r in records] == [("approved", "auto_approve", 180.0)]


def test_estimate_within_the_budget_is_not_asked(prefect_api: None, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    config = TrainConfig(**BASE, estimated_epoch_s=1)
    result = train(config=config, store=store, run_key="fits", approval_budget="1h")
    assert isinstance(result, dict) and result["global_step"] == 24
    assert open_ledger(store, "fits").records() == []


def test_over_budget_run_pauses_until_approved_then_trains(prefect_api: None, tmp_path: Path) -> None:
    store, name = str(tmp_path / "store"), f"train-approval-{uuid.uuid4().hex[:8]}"
    config = TrainConfig(**BASE, estimated_epoch_s=600)
    out: dict[str, State[Any]] = {}

    def run() -> None:
        flow = train.with_options(flow_run_name=name, retries=0)
        out["state"] = flow(
            config=config, store=store, run_key="asks", approval_budget="10m", return_state=True
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    flow_run_id = wait_for(lambda: paused_run_id(name), "the training run to pause for approval")
    assert list(Path(store, "asks").glob("epoch_*")) == []  # no training before the decision
    approve_flow_run(flow_run_id, minutes=30, reason="release candidate", approver="ana")
    thread.join(120)
    result = out["state"].result()
    assert isinstance(result, dict) and result["global_step"] == 24
    kinds = [(r.kind, r.who, r.limit_s) for r in open_ledger(store, "asks").records()]
    assert kinds == [("requested", "", None), ("approved", "ana", 1800.0)]


def test_no_estimate_caps_the_run_at_the_default_budget(prefect_api: None, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    config = TrainConfig(**BASE, step_delay_s=0.05, initial_save_s=0.05)  # >= 1.2 s of steps
    with pytest.raises(TrainingTimedOut):
        train.with_options(retries=0)(config=config, store=store, run_key="capped", approval_budget="0.5s")
    assert newest(CheckpointEngine(store).run("capped")) is not None  # saved before the cap
    assert open_ledger(store, "capped").records() == []  # nothing to ask without an estimate


def test_estimate_uses_measured_epochs_once_the_run_has_committed(tmp_path: Path) -> None:
    prefix = RunCheckpoints.from_url(str(tmp_path / "run"))
    config = TrainConfig(**BASE, estimated_epoch_s=999)
    assert estimate_remaining(config, prefix, steps_per_epoch=8) == RunEstimate(3.0, 999, "configured")
    with pytest.raises(TrainingInterrupted):
        train_mlp(config.model_copy(update={"stop_at_step": 12, "step_delay_s": 0.01}), prefix)
    estimate = estimate_remaining(config, prefix, steps_per_epoch=8)
    assert estimate.source == "measured" and estimate.epochs_left == 1.5
    assert estimate.epoch_s is not None and 0 < estimate.epoch_s < 999


def test_a_malformed_approval_budget_ends_the_run_before_training_naming_the_parameter(
    prefect_api: None, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    state = train.with_options(retries=0)(config=TrainConfig(**BASE), store=str(store), run_key="soon",
                                          approval_budget="soon", return_state=True)
    assert state.is_failed() and state.name == "InvalidParameters", state
    expected = "training run: invalid parameters: approval_budget: duration 'soon' is invalid"
    assert (state.message or "").startswith(expected), state.message
    assert not list(store.glob("soon/**/MANIFEST.json")), "nothing trained, nothing committed"


def test_a_rejected_training_run_ends_not_approved_with_the_reason(prefect_api: None, tmp_path: Path) -> None:
    store, name = str(tmp_path / "store"), f"train-reject-{uuid.uuid4().hex[:8]}"
    out: dict[str, State[Any]] = {}

    def run() -> None:
        flow = train.with_options(flow_run_name=name, retries=0)
        out["state"] = flow(config=TrainConfig(**BASE, estimated_epoch_s=600), store=store, run_key="no",
                            approval_budget="10m", return_state=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    flow_run_id = wait_for(lambda: paused_run_id(name), "the training run to pause for approval")
    approve_flow_run(flow_run_id, minutes=1, reason="too costly this week", approver="bo", reject=True)
    thread.join(120)
    state = out["state"]
    assert state.is_failed() and state.name == "NotApproved", state
    assert "too costly this week" in (state.message or "") and "bo" in (state.message or "")
    assert list(Path(store, "no").glob("epoch_*")) == []
