"""What a training run shows in Prefect: its log lines, its checkpoint index, its progress, and events.

Invariants:

* ``TrainingArtifacts`` is a ``grd_blocks.training.loop.TrainingObserver``. It logs (to the flow run's logger
  when given one) one line when an attempt starts, naming the checkpoint it resumed from or saying there is
  none yet, and one line per finished epoch: its metrics and the checkpoint committed at its end (or that
  none was due).
* The run's checkpoint index is ONE artifact key (``grd-checkpoints-<run key>``) and ONE artifact per
  attempt, created at the attempt's first commit and then updated in place (the run's Artifacts tab shows
  one card per attempt, not one per commit). Its rows are kept in memory, seeded once per attempt from the
  store, and follow retention: after each commit the rows the store's retention policy deletes (the same
  ``select_deletions`` the store applies) are dropped, so the latest version lists what the store holds;
  nothing is listed or read back per checkpoint beyond the new manifest's checksum.
* After every commit it emits ``grd.checkpoint.committed``; at each epoch's end ONE progress artifact update
  (percent of the target epochs, ``grd-progress-<run key>``, created once per attempt, updated in place);
  on a resume ``grd.run.resumed``. Events go through Prefect's buffered events worker.
* It never raises: a failed publish is logged (once per kind, then at debug level) and training goes on.
  Outside a flow or task run no artifact is published (events and log lines still are).
* A row's checksum is the first 12 hex digits of the sha256 of the checkpoint's MANIFEST.json, which itself
  holds the sha256 of every payload file: equal checksums mean identical checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from grd_blocks.checkpoint import CheckpointRef, RunCheckpoints
from grd_blocks.checkpoint.refs import format_size
from grd_blocks.checkpoint.retention import select_deletions
from grd_blocks.checkpoint.storage.layout import MANIFEST_NAME, join
from grd_blocks.prefect_edge.artifacts import checkpoint_index_key, in_prefect_run, progress_artifact_key
from grd_blocks.prefect_edge.events import checkpoint_committed, run_resumed
from grd_blocks.training.resume import PARTIAL, Position

__all__ = ["TrainingArtifacts", "format_size", "index_row", "manifest_checksum"]

logger = logging.getLogger(__name__)
CHECKSUM_CHARS = 12


def manifest_checksum(prefix: RunCheckpoints, ref: CheckpointRef) -> str:
    """Short sha256 of ``ref``'s MANIFEST.json under ``prefix`` (one store read), or "?" if unreadable."""
    try:
        data = prefix.fs.cat_file(join(prefix.path, ref.name, MANIFEST_NAME))
    except Exception as exc:
        logger.warning("could not read the manifest of %s for its checksum (%s)", ref.url, exc)
        return "?"
    return hashlib.sha256(data).hexdigest()[:CHECKSUM_CHARS]


def index_row(ref: CheckpointRef, checksum: str, *, partial: bool = False) -> dict[str, Any]:
    """One checkpoint index row (what the table artifact shows)."""
    meta = ref.metadata
    metrics = ", ".join(f"{k}={v:.6g}" for k, v in sorted(ref.metrics.items()))
    return {
        "checkpoint": f"{PARTIAL}/{ref.name}" if partial else ref.name,
        "epoch": meta.get("epoch", ref.epoch),
        "step": meta.get("global_step", ref.step),
        "metrics": metrics or "-",
        "size": format_size(ref.size_bytes),
        "checksum": checksum,
        "url": ref.url,
        "created_at": ref.created_at,
    }


def _order(row: dict[str, Any]) -> tuple[int, str]:
    step = row.get("step")
    return (step if isinstance(step, int) else -1, str(row["created_at"]))


class TrainingArtifacts:
    """Publishes one run's log lines, checkpoint index, progress and events (see the module invariants)."""

    def __init__(
        self,
        run_key: str,
        checkpoints: RunCheckpoints,
        *,
        target_epochs: int,
        attempt: int = 1,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.run_key = run_key
        self.checkpoints = checkpoints
        self.target_epochs = max(1, target_epochs)
        self.attempt = attempt
        self.log = log if log is not None else logging.getLogger("grd.training")
        self.index_key = checkpoint_index_key(run_key)
        self.progress_key = progress_artifact_key(run_key)
        self.rows: dict[str, dict[str, Any]] = {}
        self.refs: dict[str, list[CheckpointRef]] = {}  # prefix url -> its committed checkpoints
        self.index_id: UUID | None = None
        self.progress_id: UUID | None = None
        self.percent: float | None = None
        self.index_writes = 0
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ observer
    def started(self, position: Position, *, resumed_url: str | None, steps_per_epoch: int) -> None:
        """Seed the index from the store, say where this attempt starts, create its progress artifact."""
        for prefix, partial in ((self.checkpoints, False), (self.checkpoints.child(PARTIAL), True)):
            try:
                refs = prefix.checkpoints()
            except Exception as exc:
                self._failed("seed", f"could not list {prefix.url} for the checkpoint index ({exc})")
                continue
            self.refs[prefix.url] = list(refs)
            for ref in refs:
                self.rows[ref.url] = index_row(ref, manifest_checksum(prefix, ref), partial=partial)
        if resumed_url is not None:
            self.log.info(
                "attempt %d of run %s resumed from %s (epoch %d, batch %d, global step %d)",
                self.attempt, self.run_key, resumed_url, position.epoch, position.batch, position.global_step,
            )
            run_resumed(
                self.run_key,
                attempt=self.attempt,
                detail={"checkpoint_url": resumed_url, **position.metadata()},
            )
        else:
            self.log.info("attempt %d of run %s: no checkpoint in %s yet; starting at epoch 0",
                          self.attempt, self.run_key, self.checkpoints.url)
        self.percent = self._percent(position)
        self.progress_id = self._guard("progress", self._create_progress, self.percent)

    def committed(self, ref: CheckpointRef, position: Position, prefix: RunCheckpoints) -> None:
        """Add ``ref`` to the index, drop what retention deleted, publish it (one write) and emit
        ``grd.checkpoint.committed``."""
        partial = prefix.url != self.checkpoints.url
        self.rows[ref.url] = index_row(ref, manifest_checksum(prefix, ref), partial=partial)
        kept = [r for r in self.refs.get(prefix.url, []) if r.name != ref.name] + [ref]
        for gone in select_deletions(kept, prefix.retention, protected={ref.name}):
            self.rows.pop(gone.url, None)
            kept.remove(gone)
        self.refs[prefix.url] = kept
        self._guard("index", self._publish_index)
        checkpoint_committed(self.run_key, ref)

    def epoch_finished(
        self, position: Position, *, metrics: Mapping[str, float], checkpoint: str | None
    ) -> None:
        """Log the epoch's line; update the progress artifact (one write) when the percentage changed."""
        values = ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())) or "no metrics"
        saved = f"checkpoint committed: {checkpoint}" if checkpoint else "no checkpoint due at its end"
        self.log.info("epoch %d/%d (global step %d): %s; %s", position.epoch, self.target_epochs,
                      position.global_step, values, saved)
        percent = self._percent(position)
        if percent == self.percent or self.progress_id is None:
            return
        self.percent = percent
        self._guard("progress", self._update_progress, self.progress_id, percent)

    # ------------------------------------------------------------------ publishing
    def table(self) -> list[dict[str, Any]]:
        """The index rows, oldest first (by global step)."""
        return sorted(self.rows.values(), key=_order)

    def _percent(self, position: Position) -> float:
        return round(min(100.0, 100.0 * position.epoch / self.target_epochs), 1)

    def _describe(self, what: str) -> str:
        return (
            f"grd {what} of run key `{self.run_key}` (attempt {self.attempt}, "
            f"target {self.target_epochs} epochs)"
        )

    def _publish_index(self) -> None:
        from prefect.artifacts import create_table_artifact

        if not in_prefect_run():
            return
        if self.index_id is None:
            created = create_table_artifact(
                table=self.table(), key=self.index_key, description=self._describe("checkpoint index")
            )
            self.index_id = created if isinstance(created, UUID) else None  # sync here: never a coroutine
        else:
            from prefect import get_client
            from prefect.client.schemas.actions import ArtifactUpdate

            with get_client(sync_client=True) as client:
                client.update_artifact(self.index_id, ArtifactUpdate(data=json.dumps(self.table())))
        self.index_writes += 1

    def _create_progress(self, percent: float) -> UUID | None:
        from prefect.artifacts import create_progress_artifact

        if not in_prefect_run():
            return None
        created = create_progress_artifact(
            progress=percent, key=self.progress_key, description=self._describe("training progress")
        )
        return created if isinstance(created, UUID) else None  # sync here: never a coroutine

    def _update_progress(self, artifact_id: UUID, percent: float) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(artifact_id=artifact_id, progress=percent)

    def _guard(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as exc:  # artifacts are telemetry: never stop training
            self._failed(what, f"could not publish the {what} artifact of run {self.run_key} ({exc})")
            return None

    def _failed(self, what: str, message: str) -> None:
        level = logging.DEBUG if what in self._warned else logging.WARNING
        self._warned.add(what)
        logger.log(level, "%s; training goes on", message)
