"""``CheckpointEngine``: a checkpoint store rooted at one URL, holding runs keyed by validated run keys.

Invariant: the engine never touches anything outside ``{url}/{run_key}/`` for a valid run key; it holds only
configuration (URL, storage options, retention) and delegates every operation to ``RunCheckpoints``.
No Prefect here: the Block (grd_blocks/prefect_edge/block.py) wraps this object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec

from grd_blocks.checkpoint.refs import CheckpointRef, ResumeHints
from grd_blocks.checkpoint.retention import Mode, RetentionPolicy
from grd_blocks.checkpoint.run import RunCheckpoints
from grd_blocks.checkpoint.storage.fsio import check_store_url, guard, open_fs
from grd_blocks.checkpoint.storage.layout import basename, join, validate_run_key


class RunOperations:
    """The store operations of docs/design.md, each naming its run key, written once on top of ``run()``
    (the engine here; the Prefect Block, which has the same operations, through its engine)."""

    def run(self, run_key: str) -> RunCheckpoints:
        """One run's checkpoints."""
        raise NotImplementedError

    def save_checkpoint(
        self,
        run_key: str,
        *,
        state: Mapping[str, Any],
        step: int | None = None,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CheckpointRef:
        """Commit ``state`` as ``{run_key}/step_{step}`` (or ``epoch_{epoch}``)."""
        return self.run(run_key).save(state, step=step, epoch=epoch, metrics=metrics, metadata=metadata)

    def latest_checkpoint(self, run_key: str) -> CheckpointRef | None:
        """The newest committed checkpoint of ``run_key``, or None."""
        return self.run(run_key).latest()

    def load_checkpoint(
        self,
        run_key: str,
        *,
        step: int | None = None,
        epoch: int | None = None,
        into: Mapping[str, Any] | None = None,
        map_location: Any = "cpu",
    ) -> dict[str, Any] | None:
        """The latest valid checkpoint's state (or exactly step/epoch); restores ``into`` in place."""
        return self.run(run_key).load(step=step, epoch=epoch, into=into, map_location=map_location)

    def list_checkpoints(self, run_key: str) -> list[CheckpointRef]:
        """Every committed checkpoint of ``run_key``, oldest first."""
        return self.run(run_key).checkpoints()

    def resume_hints(self, run_key: str, *, target: int | None = None) -> ResumeHints:
        """Where ``run_key`` should resume, and how far it is from ``target``."""
        return self.run(run_key).hints(target=target)


class CheckpointEngine(RunOperations):
    """A store URL (``./checkpoints``, ``s3://bucket/prefix``, ``memory://x``) plus retention options."""

    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        keep_last: int | None = None,
        keep_best: int = 0,
        monitor: str | None = None,
        mode: Mode = "min",
        fs: fsspec.AbstractFileSystem | None = None,
    ) -> None:
        check_store_url(url)  # before the trailing slashes go: 's3://' must not become the local folder 's3:'
        self.url = url.rstrip("/") or url
        self.storage_options = dict(storage_options or {})
        self.retention = RetentionPolicy(keep_last=keep_last, keep_best=keep_best, monitor=monitor, mode=mode)
        if fs is None:
            self.fs, self.path = open_fs(self.url, self.storage_options)
        else:
            self.fs, self.path = fs, str(fs._strip_protocol(self.url)).rstrip("/") or "/"

    def run_url(self, run_key: str) -> str:
        """``{url}/{run_key}`` (after validating ``run_key``)."""
        return join(self.url, validate_run_key(run_key))

    def run(self, run_key: str) -> RunCheckpoints:
        """One run's checkpoints; ``InvalidRunKey`` for a key outside ``[A-Za-z0-9_.-]{1,128}``."""
        return RunCheckpoints.under(
            self.url,
            self.path,
            run_key,
            fs=self.fs,
            storage_options=self.storage_options,
            retention=self.retention,
        )

    def list_runs(self) -> list[str]:
        """Run keys that have a directory in the store (valid run-key names only), sorted."""
        self.fs.invalidate_cache(self.path)
        try:
            with guard(self.url, "list runs", missing_ok=True):
                entries = self.fs.ls(self.path, detail=True)
        except FileNotFoundError:
            return []
        runs = []
        for entry in entries:
            name = basename(str(entry["name"]))
            if entry.get("type") == "directory" and not name.startswith(".") and _is_run_key(name):
                runs.append(name)
        return sorted(runs)


def _is_run_key(name: str) -> bool:
    try:
        validate_run_key(name)
    except ValueError:
        return False
    return True
