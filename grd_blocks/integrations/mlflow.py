"""MLflow (``grd[mlflow]``): with an MLflow run active, every checkpoint commit is recorded in that run, and
the run's status says how the attempt ended.

Nothing to add to a training script: a ``save``/``save_async`` made while ``mlflow.active_run()`` is not
None (``mlflow.start_run()``, the Trainer's ``report_to="mlflow"``, Lightning's ``MLFlowLogger`` run) is,
once committed:

* one point of grd's own metric ``grd.checkpoint`` at its step (``step`` of a ``step_N`` checkpoint, the
  epoch of an ``epoch_N`` one), its value the checkpoint's index;
* ``grd/checkpoints/{name}/MANIFEST.json``, an artifact holding the very bytes of the committed manifest
  (every file's size and digest, the metrics, the writer), and ``grd/checkpoints/{name}/checkpoint.json``
  (URL, unit, index, step, epoch, metrics, created_at);
* the tags ``grd.checkpoint_url`` (the newest commit's URL) and ``grd.run_url`` (the run prefix).

Invariants:

* grd never logs a metric under a key it does not own: every metric it writes starts with ``grd.``, so the
  user's charts (``loss``, ``val_loss``) hold exactly the points the user's own logging wrote. A
  checkpoint's metrics are in its ``checkpoint.json`` and manifest, not re-plotted.
* A run grd recorded into whose process stops training early (``TrainingInterrupted``: a budget, SIGTERM,
  SIGINT) ends ``KILLED`` (MLflow's status for a run stopped from outside; a framework or ``with
  mlflow.start_run()`` that marked it ``FAILED`` on the way out is overridden at exit), tagged ``grd.status``
  ``TIMEOUT`` / ``PREEMPTED`` / ``CANCELLED`` (``STOP_AT_STEP`` for ``stop_at_step``). A run that finishes is
  left to its owner (``FINISHED``).
* A run of the same run prefix (tag ``grd.run_url``) in the same experiment that is still ``RUNNING`` when a
  later run records its first commit was abandoned by a process that died without closing it (SIGKILL, OOM,
  a lost machine): it is closed ``KILLED`` with ``grd.status=KILLED``. This assumes one writer per run prefix
  at a time, as grd's attempts are.
* The run is the one active in the thread that called ``save`` (MLflow's active run is thread-local), bound
  then, so a background save reports to it too. Nothing is recorded for a save that did not commit, and a
  failure to record is a warning, never a failed save (``grd_blocks.checkpoint.observers``). The store stays
  the truth: retention may later delete a checkpoint whose record stays in MLflow. ``GRD_TRACKING=0`` turns
  the recording off.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time

import mlflow
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from grd_blocks.checkpoint.observers import Observer
from grd_blocks.checkpoint.payload.manifest import Manifest
from grd_blocks.checkpoint.refs import CheckpointRef
from grd_blocks.errors import TrainingInterrupted
from grd_blocks.training.leaving import last_stop

__all__ = ["STOP_STATUS", "close_abandoned", "close_stopped", "observer_for_active_run", "record_commit"]

logger = logging.getLogger("grd.integrations.mlflow")

ARTIFACTS = "grd/checkpoints"
METRIC = "grd.checkpoint"
STATUS_TAG = "grd.status"
KILLED = RunStatus.to_string(RunStatus.KILLED)
STOP_STATUS = {"deadline": "TIMEOUT", "preempted": "PREEMPTED", "cancelled": "CANCELLED"}

_lock = threading.Lock()
_recorded: dict[str, tuple[str, str]] = {}  # run_id -> (tracking URI, the newest checkpoint URL recorded)
_swept: set[tuple[str, str]] = set()  # (run_id, run_url) whose abandoned predecessors were closed
_exit_hook = False


def observer_for_active_run() -> Observer | None:
    """The observer that records commits in the MLflow run active in this thread now (None without one)."""
    global _exit_hook
    run = mlflow.active_run()
    if run is None:
        return None
    uri = mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    run_id = run.info.run_id

    def observe(ref: CheckpointRef, manifest: Manifest) -> None:
        record_commit(client, run_id, ref, manifest)
        run_url = ref.url.rsplit("/", 1)[0]
        with _lock:
            _recorded.pop(run_id, None)  # the last run recorded into comes last
            _recorded[run_id] = (uri, ref.url)
            first = (run_id, run_url) not in _swept
            _swept.add((run_id, run_url))
        if first:
            close_abandoned(client, run_id, run_url)

    with _lock:
        if not _exit_hook:  # registered after MLflow's own (made at its import), so it runs before it
            atexit.register(_close_at_exit)
            _exit_hook = True
    return observe


def record_commit(client: MlflowClient, run_id: str, ref: CheckpointRef, manifest: Manifest) -> None:
    """Log one committed checkpoint into the MLflow run ``run_id`` (see the module docstring)."""
    step = ref.step if ref.step is not None else (ref.epoch if ref.epoch is not None else ref.index)
    client.log_batch(run_id, metrics=[Metric(METRIC, float(ref.index), int(time.time() * 1000), step)])
    where = f"{ARTIFACTS}/{ref.name}"
    client.log_text(run_id, manifest.to_bytes().decode("utf-8"), f"{where}/MANIFEST.json")
    record = {
        "url": ref.url, "unit": ref.unit, "index": ref.index, "step": ref.step, "epoch": ref.epoch,
        "metrics": ref.metrics, "created_at": ref.created_at,
    }
    client.log_text(run_id, json.dumps(record, indent=2, sort_keys=True), f"{where}/checkpoint.json")
    client.set_tag(run_id, "grd.checkpoint_url", ref.url)
    client.set_tag(run_id, "grd.run_url", ref.url.rsplit("/", 1)[0])


def close_abandoned(client: MlflowClient, run_id: str, run_url: str) -> list[str]:
    """Close as ``KILLED`` (tag ``grd.status=KILLED``) every other run of ``run_url`` in ``run_id``'s
    experiment still ``RUNNING``: its process died without closing it. The ids closed."""
    experiment = client.get_run(run_id).info.experiment_id
    closed: list[str] = []
    for other in client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'"):
        if other.info.run_id == run_id or other.data.tags.get("grd.run_url") != run_url:
            continue
        client.set_tag(other.info.run_id, STATUS_TAG, "KILLED")
        client.set_terminated(other.info.run_id, KILLED)
        logger.warning("MLflow run %s of %s was left RUNNING by an attempt that died without closing it; "
                       "marked KILLED (tag grd.status=KILLED)", other.info.run_id, run_url)
        closed.append(other.info.run_id)
    return closed


def close_stopped(client: MlflowClient, run_id: str, stop: TrainingInterrupted) -> None:
    """End ``run_id`` as ``KILLED`` tagged ``grd.status`` with why ``stop`` ended its training."""
    client.set_tag(run_id, STATUS_TAG, STOP_STATUS.get(stop.reason, stop.reason.upper()))
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(KILLED)  # else MLflow's own exit hook would end it FINISHED
    else:
        client.set_terminated(run_id, KILLED)


def _close_at_exit() -> None:
    """At exit after a training stop: the run that recorded the stop's checkpoint (or, for a stop that
    committed nothing, the last run recorded into) ends KILLED with its ``grd.status``."""
    stop = last_stop()
    with _lock:
        recorded = dict(_recorded)
    if stop is None or not recorded:
        return
    ids = [run_id for run_id, (_, url) in recorded.items() if url == stop.checkpoint_url]
    for run_id in ids or list(recorded)[-1:]:
        try:
            close_stopped(MlflowClient(tracking_uri=recorded[run_id][0]), run_id, stop)
        except Exception:  # a tracker must not change how the process exits
            logger.warning("closing MLflow run %s as KILLED failed", run_id, exc_info=True)
