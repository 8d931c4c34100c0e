"""Open the checkpoint store of a run: how commands reach it, and the run's progress prefix.

Invariant: progress lives at ``{store}/{run_key}/progress`` and never in a command's own prefix
(``{store}/{run_key}/commands/{phase}.{command}``), so a command cannot overwrite the run's progress. Progress
snapshots keep only the newest ``PROGRESS_KEEP`` (each holds every row; the store's own retention settings
apply to the commands' checkpoints, not to progress).
"""

from __future__ import annotations

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.checkpoint.retention import RetentionPolicy
from grd_blocks.checkpoint.run import RunCheckpoints
from grd_blocks.orchestration.environment import StoreAccess
from grd_blocks.orchestration.progress import ProgressPrefix
from grd_blocks.prefect_edge.block import resolve_store

__all__ = ["PROGRESS_KEEP", "open_store", "progress_prefix"]

PROGRESS_KEEP = 2


def open_store(name_or_url: str | None, run_key: str) -> tuple[StoreAccess, ProgressPrefix]:
    """Resolve ``name_or_url``: a saved CheckpointStore block's name, a URL, or None for the default."""
    block = resolve_store(name_or_url)
    return block.access(), progress_prefix(block.engine(), run_key)


def progress_prefix(engine: CheckpointEngine, run_key: str) -> ProgressPrefix:
    """``{store}/{run_key}/progress`` of ``engine``, keeping ``PROGRESS_KEEP`` snapshots."""
    run = engine.run(run_key).child("progress")
    return RunCheckpoints(run.url, fs=run.fs, path=run.path, storage_options=run.storage_options,
                          retention=RetentionPolicy(keep_last=PROGRESS_KEEP))
