"""MLflow (``grd[mlflow]``): with an MLflow run active, every checkpoint commit is recorded in that run.

Nothing to add to a training script: a ``save``/``save_async`` made while ``mlflow.active_run()`` is not
None (``mlflow.start_run()``, the Trainer's ``report_to="mlflow"``, Lightning's ``MLFlowLogger`` run) is,
once committed:

* its metrics, logged at its step (``step`` of a ``step_N`` checkpoint, the epoch of an ``epoch_N`` one);
* ``grd/checkpoints/{name}/MANIFEST.json``, an artifact holding the very bytes of the committed manifest
  (every file's size and digest, the metrics, the writer), and ``grd/checkpoints/{name}/checkpoint.json``
  (URL, unit, index, step, epoch, metrics, created_at);
* the tags ``grd.checkpoint_url`` (the newest commit's URL) and ``grd.run_url`` (the run prefix).

Invariants: the run is the one active in the thread that called ``save`` (MLflow's active run is
thread-local), bound then, so a background save reports to it too. Nothing is recorded for a save that did not
commit, and a failure to record is a warning, never a failed save (``grd_blocks.checkpoint.observers``).
The store stays the truth: retention may later delete a checkpoint whose record stays in MLflow.
``GRD_TRACKING=0`` turns the recording off.
"""

from __future__ import annotations

import json
import time

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from grd_blocks.checkpoint.observers import Observer
from grd_blocks.checkpoint.payload.manifest import Manifest
from grd_blocks.checkpoint.refs import CheckpointRef

__all__ = ["observer_for_active_run", "record_commit"]

ARTIFACTS = "grd/checkpoints"


def observer_for_active_run() -> Observer | None:
    """The observer that records commits in the MLflow run active in this thread now (None without one)."""
    run = mlflow.active_run()
    if run is None:
        return None
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    run_id = run.info.run_id

    def observe(ref: CheckpointRef, manifest: Manifest) -> None:
        record_commit(client, run_id, ref, manifest)

    return observe


def record_commit(client: MlflowClient, run_id: str, ref: CheckpointRef, manifest: Manifest) -> None:
    """Log one committed checkpoint into the MLflow run ``run_id`` (see the module docstring)."""
    step = ref.step if ref.step is not None else (ref.epoch if ref.epoch is not None else ref.index)
    now_ms = int(time.time() * 1000)
    metrics = [Metric(key, value, now_ms, step) for key, value in sorted(ref.metrics.items())]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    where = f"{ARTIFACTS}/{ref.name}"
    client.log_text(run_id, manifest.to_bytes().decode("utf-8"), f"{where}/MANIFEST.json")
    record = {
        "url": ref.url, "unit": ref.unit, "index": ref.index, "step": ref.step, "epoch": ref.epoch,
        "metrics": ref.metrics, "created_at": ref.created_at,
    }
    client.log_text(run_id, json.dumps(record, indent=2, sort_keys=True), f"{where}/checkpoint.json")
    client.set_tag(run_id, "grd.checkpoint_url", ref.url)
    client.set_tag(run_id, "grd.run_url", ref.url.rsplit("/", 1)[0])
