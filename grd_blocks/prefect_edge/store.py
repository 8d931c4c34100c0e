"""Open the checkpoint store of a run: how commands reach it, and the run's progress prefix.

Invariant: progress lives at ``{store}/{run_key}/progress`` and never in a command's own prefix
(``{store}/{run_key}/commands/{phase}.{command}``), so a command cannot overwrite the run's progress. Progress
snapshots keep only the newest ``PROGRESS_KEEP`` (each holds every row; the store's own retention settings
apply to the commands' checkpoints, not to progress).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from prefect.runtime import deployment

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.checkpoint.retention import RetentionPolicy
from grd_blocks.checkpoint.run import RunCheckpoints
from grd_blocks.errors import ConfigError
from grd_blocks.orchestration.environment import StoreAccess
from grd_blocks.orchestration.progress import ProgressPrefix
from grd_blocks.prefect_edge.block import CheckpointStore, resolve_store

__all__ = ["PROGRESS_KEEP", "OpenedStore", "open_store", "progress_prefix", "run_store"]

PROGRESS_KEEP = 2


class OpenedStore(NamedTuple):
    """A run's store: how commands reach it, its progress prefix, and each command's own prefix (by
    ``phase.command``; the engine reads them before and after an attempt, checkpoint_watch.py)."""

    access: StoreAccess
    progress: ProgressPrefix
    commands: Callable[[str], RunCheckpoints]


def open_store(name_or_url: str | None, run_key: str) -> OpenedStore:
    """Resolve ``name_or_url``: a saved CheckpointStore block's name, a URL, or None for the default."""
    block = run_store(name_or_url)
    engine = block.engine()
    return OpenedStore(block.access(), progress_prefix(engine, run_key),
                       engine.run(run_key).child("commands").child)


def run_store(name_or_url: str | None) -> CheckpointStore:
    """The store a flow run checkpoints to (``resolve_store``); a memory store is refused for a deployment's
    run, whose Retry runs in a new process that would find nothing (``ConfigError``, the user's to fix)."""
    block = resolve_store(name_or_url)
    fs = block.engine().fs
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if "memory" in protocols and deployment.id:
        raise ConfigError(
            f"checkpoint store {block.url!r} is a memory store: it lives only in this process, so a Retry of "
            "this deployment run (a new process) would find nothing; use a directory or s3://bucket/prefix "
            "(a memory store suits only a flow called in one process)"
        )
    return block


def progress_prefix(engine: CheckpointEngine, run_key: str) -> ProgressPrefix:
    """``{store}/{run_key}/progress`` of ``engine``, keeping ``PROGRESS_KEEP`` snapshots."""
    run = engine.run(run_key).child("progress")
    return RunCheckpoints(run.url, fs=run.fs, path=run.path, storage_options=run.storage_options,
                          retention=RetentionPolicy(keep_last=PROGRESS_KEEP))
