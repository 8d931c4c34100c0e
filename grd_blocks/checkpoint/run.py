"""One run's checkpoints: ``{prefix}/{unit}_{N}/`` directories and ``{prefix}/LATEST.json``.

This module is the write side (save, retention, delete); finding, verifying and loading is reader.py.

Invariants:

* A checkpoint exists only once its ``MANIFEST.json`` exists and agrees with its payload (commit.py). A large
  payload is serialized as a stream of 8 MiB pieces: each piece is hashed once (its chunk digest, under the
  algorithm the manifest records: hashes.py) while it is written to disk or sent to S3, and the rest is still
  being serialized; if that serializing fails, its own error is raised, and nothing was committed.
* LATEST.json never moves backwards: a save with a lower N is committed but leaves LATEST alone (a
  ``StaleWriter`` warning is logged, nothing is raised).
* Retention runs only after a commit and never deletes the newest, the latest or the best (retention.py).
* A retry that saves the same N replaces that checkpoint (old version hidden first; see commit.py).
* After a local commit, staging directories left by crashed writers are swept (staging.py); like retention,
  that cleanup never fails the save.
* Experiment trackers with a run active when ``save``/``save_async`` is called (MLflow) are told about the
  commit once LATEST moved: its metrics at its step, its URL and its manifest (observers.py); a tracker's
  failure never fails the save.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, overload

import fsspec

from grd_blocks.checkpoint.async_writer import AsyncWriter, ShardedWriter
from grd_blocks.checkpoint.observers import Observer, bind_automatic, notify
from grd_blocks.checkpoint.payload.digest import digest_later
from grd_blocks.checkpoint.payload.handlers import encode_state, tensor_bytes
from grd_blocks.checkpoint.payload.hashes import save_algorithm
from grd_blocks.checkpoint.payload.manifest import (
    GRD_VERSION,
    FileEntry,
    LatestPointer,
    Manifest,
    now_iso,
    parse_latest,
    writer_id,
)
from grd_blocks.checkpoint.payload.serialization import PieceStream, serialize
from grd_blocks.checkpoint.payload.snapshot import SnapshotBuffers
from grd_blocks.checkpoint.reader import RunReader
from grd_blocks.checkpoint.refs import CheckpointRef, ResumeHints
from grd_blocks.checkpoint.retention import Mode, RetentionPolicy, select_deletions
from grd_blocks.checkpoint.storage.commit import CommitProtocol, RenameCommit, protocol_for
from grd_blocks.checkpoint.storage.fsio import guard, open_fs
from grd_blocks.checkpoint.storage.layout import (
    LATEST_NAME,
    OPENED_NAME,
    Unit,
    checkpoint_dirname,
    join,
    validate_run_key,
)
from grd_blocks.errors import CheckpointCorrupt, ConfigError, StaleWriter, UsageError

logger = logging.getLogger("grd.checkpoint")

REPAIR_ROUNDS = 16
"""Most repairs of a lagging LATEST.json one save makes on a store without conditional writes."""


def _pointer_bytes(ref: CheckpointRef) -> bytes:
    return LatestPointer(
        unit=ref.unit, index=ref.index, dirname=ref.name, created_at=ref.created_at, writer=ref.writer or ""
    ).to_bytes()


def _same(ref: CheckpointRef, _pointer: LatestPointer | None) -> CheckpointRef:
    return ref


class _Unset:
    """The type of ``_UNSET``: ``from_env`` was given no ``default``."""


_UNSET = _Unset()


def _stored(entry: FileEntry, file_name: str, objects: Mapping[str, str]) -> FileEntry:
    """``entry`` naming the object that holds ``file_name`` when the commit wrote it elsewhere (commit.py)."""
    stored_as = objects.get(file_name, file_name)
    return entry if stored_as == file_name else replace(entry, stored_as=stored_as)


def _metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"metric {key!r}={value!r} is not a number; metrics must be floats") from None
    return out


def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    try:
        return dict(json.loads(json.dumps(dict(metadata or {}))))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"checkpoint metadata must be JSON-serializable ({exc})") from None


def _check_index(step: int | None, epoch: int | None) -> None:
    for name, value in (("step", step), ("epoch", epoch)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise UsageError(f"{name}={value!r} is invalid: pass an int >= 0")


@dataclass(frozen=True)
class _PendingSave:
    """A save's encoded state and validated arguments, ready to serialize and commit."""

    payload: dict[str, Any]
    types: dict[str, str]
    unit: Unit
    index: int
    step: int | None
    epoch: int | None
    metrics: dict[str, float]
    metadata: dict[str, Any]
    observers: tuple[Observer, ...] = ()  # bound in the caller's thread (observers.py)
    digest: str = "sha256"  # the payload's digest algorithm (hashes.py), chosen in the caller's thread


class RunCheckpoints(RunReader):
    """Save, find, load and prune the checkpoints under one run prefix (``url``)."""

    def __init__(
        self,
        url: str,
        *,
        fs: fsspec.AbstractFileSystem,
        path: str,
        storage_options: Mapping[str, Any] | None = None,
        retention: RetentionPolicy | None = None,
    ) -> None:
        commit: CommitProtocol = protocol_for(fs)
        super().__init__(url, fs=fs, path=path, local=isinstance(commit, RenameCommit))
        self.storage_options = dict(storage_options or {})
        self.retention = retention or RetentionPolicy()
        self._commit = commit
        self._writer = AsyncWriter(self.url)
        self._snapshots = SnapshotBuffers()
        self._async_step = -1  # the highest step handed to save_async
        self._sharded: ShardedWriter | None = None  # save_sharded_async's thread and process group

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        keep_last: int | None = None,
        keep_best: int = 0,
        monitor: str | None = None,
        mode: Mode = "min",
    ) -> RunCheckpoints:
        """Open the run prefix ``url`` (any fsspec URL or local path). The prefix grd gave this command
        (``url`` is ``$GRD_CHECKPOINT_URL``) gets its ``.opened`` marker (``mark_opened``)."""
        fs, path = open_fs(url, storage_options)
        policy = RetentionPolicy(keep_last=keep_last, keep_best=keep_best, monitor=monitor, mode=mode)
        run = cls(url, fs=fs, path=path, storage_options=storage_options, retention=policy)
        if url == os.environ.get("GRD_CHECKPOINT_URL"):
            run.mark_opened()
        return run

    @overload
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunCheckpoints: ...

    @overload
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, default: str) -> RunCheckpoints: ...

    @overload
    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, default: None
    ) -> RunCheckpoints | None: ...

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, default: str | _Unset | None = _UNSET
    ) -> RunCheckpoints | None:
        """Open a grd command's prefix: ``GRD_CHECKPOINT_URL`` (+ ``GRD_CHECKPOINT_STORAGE_OPTIONS``), with
        the store's retention from ``GRD_CHECKPOINT_KEEP_LAST``, ``_KEEP_BEST``, ``_MONITOR``, ``_MODE``.

        Outside grd (``GRD_CHECKPOINT_URL`` unset): ``default`` (a URL or path) is opened instead, and
        ``default=None`` returns None (no store: a ``ResumableTraining`` then saves nothing); without
        ``default`` it raises ``ConfigError``.
        """
        env = os.environ if environ is None else environ
        url = env.get("GRD_CHECKPOINT_URL")
        if not url:
            if default is None:
                return None
            if isinstance(default, str):
                return cls.from_url(default)
            raise ConfigError(
                "GRD_CHECKPOINT_URL is not set; run this under `grd run`, set it to a store prefix "
                "such as ./checkpoints/my-run, or pass from_env(default='./checkpoints/my-run')"
            )
        raw = env.get("GRD_CHECKPOINT_STORAGE_OPTIONS") or "{}"
        try:
            options = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"GRD_CHECKPOINT_STORAGE_OPTIONS is not JSON ({exc}): {raw[:200]!r}") from None
        if not isinstance(options, dict):
            raise ConfigError("GRD_CHECKPOINT_STORAGE_OPTIONS must be a JSON object")
        keep_last, keep_best = env.get("GRD_CHECKPOINT_KEEP_LAST"), env.get("GRD_CHECKPOINT_KEEP_BEST")
        mode = env.get("GRD_CHECKPOINT_MODE") or "min"
        try:
            last, best = (int(keep_last) if keep_last else None), (int(keep_best) if keep_best else 0)
        except ValueError:
            raise ConfigError(f"GRD_CHECKPOINT_KEEP_LAST={keep_last!r} / GRD_CHECKPOINT_KEEP_BEST="
                              f"{keep_best!r} must be whole numbers") from None
        run = cls.from_url(url, storage_options=options, keep_last=last, keep_best=best,
                           monitor=env.get("GRD_CHECKPOINT_MONITOR") or None,
                           mode="max" if mode == "max" else "min")
        if url != os.environ.get("GRD_CHECKPOINT_URL"):  # else from_url left it already
            run.mark_opened()
        return run

    def mark_opened(self) -> None:
        """Leave the prefix's ``.opened`` marker (once; ``from_env``, and ``from_url`` of the URL grd gave
        the command): a command of the run opened its checkpoints, so an attempt its budget stops before a
        save is worth a warning (orchestration/checkpoint_watch.py). Best effort: a store that cannot take
        it only loses that warning, never the command."""
        marker = join(self.path, OPENED_NAME)
        try:
            with guard(self.url, f"write {OPENED_NAME}"):
                if not self.fs.exists(marker):
                    if self._local:
                        self.fs.makedirs(self.path, exist_ok=True)
                    self.fs.pipe_file(marker, b"")
        except Exception as exc:  # best effort, as said
            logger.debug("could not leave %s in %s: %s", OPENED_NAME, self.url, exc)

    @classmethod
    def under(
        cls,
        url: str,
        path: str,
        name: str,
        *,
        fs: fsspec.AbstractFileSystem,
        storage_options: Mapping[str, Any],
        retention: RetentionPolicy,
    ) -> RunCheckpoints:
        """The prefix ``{url}/{name}`` (``path``/``name`` on ``fs``); ``InvalidRunKey`` unless ``name``
        follows the run-key rules."""
        validate_run_key(name)
        return cls(
            join(url, name),
            fs=fs,
            path=join(path, name),
            storage_options=storage_options,
            retention=retention,
        )

    def child(self, name: str) -> RunCheckpoints:
        """A nested prefix ``{url}/{name}`` with the same options (``name`` follows run-key rules)."""
        options, retention = self.storage_options, self.retention
        return self.under(self.url, self.path, name, fs=self.fs, storage_options=options, retention=retention)

    # ------------------------------------------------------------------ saving
    def save(
        self,
        state: Mapping[str, Any],
        *,
        step: int | None = None,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CheckpointRef:
        """Commit ``state`` as ``step_{step}`` (or ``epoch_{epoch}``; neither: the step after the latest).

        Waits for the background saves in flight (``save_async``) first and raises their failure, if any.
        """
        self._writer.wait()
        return self._write(self._prepare(state, step, epoch, metrics, metadata, copy=None))

    def save_async(
        self,
        state: Mapping[str, Any],
        *,
        step: int | None = None,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Snapshot ``state`` now (tensors copied to host memory, into an earlier save's buffers when their
        dtype and shape match: see snapshot.py), write and commit it in the background; returns once the
        snapshot is taken, without waiting for a write in flight.

        Writes run one at a time, in call order. If a save is still waiting for its turn when this one is
        made, it is never written: this newer one takes its place (``superseded`` names it; one INFO line the
        first time). So a loop that saves faster than the store writes is blocked only while it stages its
        state, and host memory holds at most three staged states (one being written, one waiting, one
        pooled for the next). A failure of a background save is raised by the next ``save``, ``save_async``
        or ``flush`` (once). Call ``flush()`` to wait for the last one (also done at interpreter exit).
        """
        staged: list[Any] = []  # the host tensors of this save's snapshot, given back once it is written
        pending = self._prepare(state, step, epoch, metrics, metadata,
                                copy=functools.partial(self._snapshots.copy, owned=staged))

        def write_then_recycle() -> CheckpointRef:
            try:
                return self._write(pending)
            finally:  # the write has read the snapshot: its buffers serve a later save_async
                self._snapshots.release(staged)

        try:
            self._writer.submit(
                write_then_recycle,
                what=checkpoint_dirname(pending.unit, pending.index),
                dropped=functools.partial(self._snapshots.release, staged),
            )
        except BaseException:  # an earlier save's failure: this one is not queued
            self._snapshots.release(staged)
            raise
        if pending.unit == "step":
            self._async_step = max(self._async_step, pending.index)

    @property
    def superseded(self) -> list[str]:
        """Checkpoints ``save_async`` (then ``save_sharded_async``) was asked for and never wrote, because a
        newer one was asked for before their write could start (oldest first)."""
        return [*self._writer.superseded, *(self._sharded.superseded if self._sharded else ())]

    def flush(self) -> None:
        """Wait for the background saves in flight and raise a failure of theirs, if any. With
        ``save_sharded_async``: every rank calls it (it issues no collective; sharded.py)."""
        self._writer.wait()
        self._sharded_wait()

    def _sharded_wait(self) -> None:
        if self._sharded is not None:
            self._sharded.wait()

    def _resolve_index(self, step: int | None, epoch: int | None) -> tuple[Unit, int]:
        _check_index(step, epoch)
        if step is not None:
            return "step", step
        if epoch is not None:
            return "epoch", epoch
        latest = self.latest()  # or a step still being written in the background
        return "step", max(-1 if latest is None else latest.index, self._async_step) + 1

    def _prepare(
        self,
        state: Mapping[str, Any],
        step: int | None,
        epoch: int | None,
        metrics: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        *,
        copy: Callable[[Any], Any] | None,
    ) -> _PendingSave:
        """Validate the arguments and encode ``state`` (through ``copy`` when it is written later)."""
        unit, index = self._resolve_index(step, epoch)
        digest = save_algorithm()  # a bad GRD_CHECKPOINT_DIGEST fails the call, not a background write
        payload, types = encode_state(state, copy=copy)
        return _PendingSave(payload, types, unit, index, step, epoch, _metrics(metrics), _metadata(metadata),
                            tuple(bind_automatic()), digest)

    def _write(self, pending: _PendingSave) -> CheckpointRef:
        payload, types, unit, index = pending.payload, pending.types, pending.unit, pending.index
        step, epoch, metrics, metadata = pending.step, pending.epoch, pending.metrics, pending.metadata
        files, payload_format = serialize(
            payload,
            stream=self._commit.takes_streams,
            window=self._commit.stream_window,
            aligned=self._commit.aligned_pieces,
            piece_size=self._commit.piece_size(tensor_bytes(payload)),
            text_piece_size=self._commit.text_piece_size,
        )
        try:
            digests = {file_name: digest_later(data, pending.digest) for file_name, data in files.items()}
        except BaseException:
            for data in files.values():
                if isinstance(data, PieceStream):
                    data.stop()
            raise
        built: list[Manifest] = []

        def manifest(objects: Mapping[str, str]) -> bytes:  # once the payload is written and hashed
            built.append(
                Manifest(
                    unit=unit,
                    index=index,
                    files={name: _stored(entry(), name, objects) for name, entry in digests.items()},
                    payload_format=payload_format,
                    handlers=types,
                    created_at=now_iso(),
                    writer=writer_id(),
                    metrics=metrics,
                    metadata=metadata,
                    step=step,
                    epoch=epoch,
                    grd_version=GRD_VERSION,
                )
            )
            return built[-1].to_bytes()

        name = checkpoint_dirname(unit, index)
        try:
            with guard(self.url, f"save {name}"):
                self._commit.commit(join(self.path, name), files, manifest)
        except BaseException:
            for data in files.values():
                failed = data.stop() if isinstance(data, PieceStream) else None
                if failed is not None:  # serializing failed: that, not how the commit met it, is the error
                    raise failed from None
            raise
        return self._committed(built[-1], pending.observers)

    def _committed(self, manifest: Manifest, observers: tuple[Observer, ...]) -> CheckpointRef:
        """After a commit: move LATEST.json (never backwards), tell the observers, apply retention, sweep
        staging leftovers; the committed checkpoint's ref."""
        ref = self._ref(manifest)
        self._advance_latest(ref)
        notify(observers, ref, manifest)
        self._apply_retention(ref)
        self._sweep_staging()
        return ref

    def _update_pointer(
        self, decide: Callable[[LatestPointer | None], CheckpointRef | None], what: str
    ) -> bool:
        """Point LATEST.json at ``decide(what it holds now)`` unless that is None (``decide`` gets None for an
        absent or unreadable pointer); True if nothing came in between (commit.py ``update_pointer``)."""

        def raw(current: bytes | None) -> bytes | None:
            pointer = None
            if current is not None:
                with contextlib.suppress(CheckpointCorrupt):
                    pointer = parse_latest(current, join(self.url, LATEST_NAME))
            ref = decide(pointer)
            return None if ref is None else _pointer_bytes(ref)

        with guard(self.url, f"update {LATEST_NAME} {what}"):
            return self._commit.update_pointer(join(self.path, LATEST_NAME), raw, url=self.url)

    def _advance_latest(self, ref: CheckpointRef) -> None:
        """Point LATEST.json at ``ref`` unless it holds a higher index (it never moves backwards); an absent
        or unreadable pointer counts as the newest checkpoint that verifies, so a stale writer never wins by
        default."""
        ahead: list[int] = []

        def forward(pointer: LatestPointer | None) -> CheckpointRef | None:
            ahead.clear()
            found = pointer if pointer is not None else self._scan_newest(quiet=True)
            if found is not None and found.index > ref.index:
                ahead.append(found.index)
                return None
            return ref

        if not self._update_pointer(forward, f"to {ref.name}"):
            self._repair_latest()
        if ahead:
            stale = StaleWriter(
                f"{ref.url} was committed, but LATEST.json already points at index {ahead[0]} > "
                f"{ref.index}; LATEST is left alone (it never moves backwards). An older writer (a retry "
                "that resumed from an earlier checkpoint, or a zombie attempt) is still saving"
            )
            logger.warning("StaleWriter: %s", stale)

    def _repair_latest(self) -> None:
        """After a pointer update that was not atomic (a store without conditional writes): while LATEST
        holds less than the newest committed checkpoint's index, point it there. Every writer does this
        after its own update, so the last update of all leaves LATEST at the newest (README: "Concurrent
        writers")."""
        for _ in range(REPAIR_ROUNDS):
            newest = self._scan_newest(quiet=True)
            current = self._read_pointer()
            if newest is None or (current is not None and current.index >= newest.index):
                return
            logger.info("LATEST.json of %s fell behind %s (a concurrent writer); repointing it", self.url,
                        newest.url)
            self._update_pointer(functools.partial(_same, newest), f"to {newest.name} (repair)")
        logger.warning("LATEST.json of %s kept changing for %d repairs; the next save repairs it again",
                       self.url, REPAIR_ROUNDS)

    def _apply_retention(self, newest: CheckpointRef) -> None:
        if not self.retention.active:
            return
        try:
            pointer = self._read_pointer()
            if pointer is None:  # nothing is known to be safe to delete until LATEST is readable again
                logger.warning("retention after committing %s skipped: %s is unreadable", newest.url,
                               join(self.url, LATEST_NAME))
                return
            deletions = select_deletions(self.checkpoints(), self.retention, protected={newest.name},
                                         latest_index=pointer.index)
            for ref in deletions:
                logger.info("retention: deleting %s", ref.url)
                with guard(self.url, f"delete {ref.name} (retention)"):
                    self._commit.remove(join(self.path, ref.name))
        except Exception:  # the new checkpoint is committed; a failed cleanup must not fail the save
            logger.warning(
                "retention after committing %s failed; will retry after the next save",
                newest.url,
                exc_info=True,
            )

    def _sweep_staging(self) -> None:
        try:
            self._commit.sweep(self.path)
        except Exception:  # the new checkpoint is committed; a failed cleanup must not fail the save
            logger.warning("sweeping stale staging entries in %s failed", self.url, exc_info=True)

    # ------------------------------------------------------------------ sharded state (sharded.py)
    def save_sharded(
        self,
        state_dict: Mapping[str, Any],
        *,
        step: int | None = None,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CheckpointRef:
        """Commit a ``torch.distributed.checkpoint`` state dict (FSDP2 DTensors, tensors, plain values)
        written by every rank, as one checkpoint: a collective, every rank calls it and gets the same ref
        (sharded.py states the guarantees)."""
        from grd_blocks.checkpoint.sharded import save_sharded

        return save_sharded(self, state_dict, step=step, epoch=epoch, metrics=metrics, metadata=metadata)

    def save_sharded_async(
        self,
        state_dict: Mapping[str, Any],
        *,
        step: int | None = None,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """``save_sharded`` in the background: every rank stages its state in host memory and returns; the
        write, the gather and the commit run on this run's thread over a gloo group of its own, created at
        the first call (a collective); a failure on any rank is raised on every rank by its next sharded
        save, load or ``flush()`` (sharded.py states the guarantees)."""
        from grd_blocks.checkpoint.sharded import save_sharded_async

        save_sharded_async(self, state_dict, step=step, epoch=epoch, metrics=metrics, metadata=metadata)

    def load_sharded(
        self, state_dict: dict[str, Any], *, step: int | None = None, epoch: int | None = None
    ) -> CheckpointRef | None:
        """Fill ``state_dict`` in place from the latest valid sharded checkpoint (or exactly step/epoch),
        resharded to this world, every file verified first; a collective, every rank gets the same ref (or
        None when there is none)."""
        from grd_blocks.checkpoint.sharded import load_sharded

        return load_sharded(self, state_dict, step=step, epoch=epoch)

    # ------------------------------------------------------------------ reading (reader.py)
    def load(
        self,
        *,
        step: int | None = None,
        epoch: int | None = None,
        into: Mapping[str, Any] | None = None,
        map_location: Any = "cpu",
    ) -> dict[str, Any] | None:
        """Wait for an in-flight ``save_async``, then ``RunReader.load`` (every digest checked, fallback)."""
        self._writer.wait()
        return super().load(step=step, epoch=epoch, into=into, map_location=map_location)

    def delete(self, ref: CheckpointRef | str) -> None:
        """Delete a checkpoint (manifest first); if LATEST pointed at it, repoint it to the newest left."""
        self._writer.wait()
        name = ref if isinstance(ref, str) else ref.name
        with guard(self.url, f"delete {name}"):
            self._commit.remove(join(self.path, name))
        newest = self._scan_newest(quiet=True)
        if newest is None:
            with guard(self.url, f"remove {LATEST_NAME} after deleting {name}"), contextlib.suppress(
                FileNotFoundError
            ):
                self.fs.rm_file(join(self.path, LATEST_NAME))
            return

        def away(pointer: LatestPointer | None) -> CheckpointRef | None:  # backwards on purpose: it is gone
            return newest if pointer is None or pointer.dirname == name else None

        self._update_pointer(away, f"after deleting {name}")

    def hints(self, *, target: int | None = None) -> ResumeHints:
        """Where to resume: the latest checkpoint's unit, index, step/epoch, URL; ``remaining`` to target."""
        ref = self.latest()
        if ref is None:
            return ResumeHints(has_checkpoint=False, remaining=target)
        return ResumeHints(
            has_checkpoint=True,
            unit=ref.unit,
            latest_index=ref.index,
            epoch=ref.epoch if ref.epoch is not None else (ref.index if ref.unit == "epoch" else None),
            step=ref.step if ref.step is not None else (ref.index if ref.unit == "step" else None),
            url=ref.url,
            remaining=None if target is None else max(0, target - ref.index),
        )
