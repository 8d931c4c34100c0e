"""What a training run shows in Prefect: its checkpoint index, its progress, and events.

Invariants:

* ``TrainingArtifacts`` is a ``grd_blocks.training.loop.TrainingObserver``: after every commit it publishes
  the run's whole checkpoint index as ONE table artifact write (``grd-checkpoints-<run key>``; rows kept in
  memory, seeded once per attempt from the store, so nothing is listed or read back per checkpoint) and
  emits ``grd.checkpoint.committed``; at each epoch's end ONE progress artifact update (percent of the target
  epochs, artifact ``grd-progress-<run key>``, created once per attempt); on a resume ``grd.run.resumed``.
  Events go through Prefect's buffered events worker, not a request per event.
* It never raises: a failed publish is logged (once per kind, then at debug level) and training goes on.
  Outside a flow or task run no artifact is published (events still are).
* A row's checksum is the first 12 hex digits of the sha256 of the checkpoint's MANIFEST.json, which itself
  holds the sha256 of every payload file: equal checksums mean identical checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from uuid import UUID

from grd_blocks.checkpoint import CheckpointRef, RunCheckpoints
from grd_blocks.checkpoint.layout import MANIFEST_NAME, join
from grd_blocks.checkpoint.refs import format_size
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
    """Publishes one run's checkpoint index, progress and events (see the module invariants)."""

    def __init__(
        self, run_key: str, checkpoints: RunCheckpoints, *, target_epochs: int, attempt: int = 1
    ) -> None:
        self.run_key = run_key
        self.checkpoints = checkpoints
        self.target_epochs = max(1, target_epochs)
        self.attempt = attempt
        self.index_key = checkpoint_index_key(run_key)
        self.progress_key = progress_artifact_key(run_key)
        self.rows: dict[str, dict[str, Any]] = {}
        self.progress_id: UUID | None = None
        self.percent: float | None = None
        self.index_writes = 0
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ observer
    def started(self, position: Position, *, resumed_url: str | None, steps_per_epoch: int) -> None:
        """Seed the index from the store, report a resume, create this attempt's progress artifact."""
        for prefix, partial in ((self.checkpoints, False), (self.checkpoints.child(PARTIAL), True)):
            try:
                refs = prefix.checkpoints()
            except Exception as exc:
                self._failed("seed", f"could not list {prefix.url} for the checkpoint index ({exc})")
                continue
            for ref in refs:
                self.rows[ref.url] = index_row(ref, manifest_checksum(prefix, ref), partial=partial)
        if resumed_url is not None:
            run_resumed(
                self.run_key,
                attempt=self.attempt,
                detail={"checkpoint_url": resumed_url, **position.metadata()},
            )
        self.percent = self._percent(position)
        self.progress_id = self._guard("progress", self._create_progress, self.percent)

    def committed(self, ref: CheckpointRef, position: Position, prefix: RunCheckpoints) -> None:
        """Add ``ref`` to the index, publish it (one write) and emit ``grd.checkpoint.committed``."""
        partial = prefix.url != self.checkpoints.url
        self.rows[ref.url] = index_row(ref, manifest_checksum(prefix, ref), partial=partial)
        self._guard("index", self._publish_index)
        checkpoint_committed(self.run_key, ref)

    def epoch_finished(self, position: Position) -> None:
        """Update the progress artifact (one write) when the percentage changed."""
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
        create_table_artifact(
            table=self.table(), key=self.index_key, description=self._describe("checkpoint index")
        )
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
