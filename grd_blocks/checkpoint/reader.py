"""The read side of one run prefix: find the latest checkpoint, verify it, load it, fall back when damaged.

Invariants:

* ``latest()`` costs O(1) requests when LATEST.json is sound (read it, read the manifest it names, ``info``
  each payload file); when anything is wrong it logs what, and scans for the newest checkpoint whose manifest
  and sizes verify. ``load()`` reuses that manifest and skips the ``info`` calls: fetching checks every size
  and digest, and a damaged checkpoint falls back exactly as it would have there.
* Nothing is deserialized before its size and digests match the manifest. On local disk each payload file is
  opened once and that descriptor is both hashed and handed to the loader (serialization.VerifiedFile), so a
  rename in between cannot swap the bytes; elsewhere the bytes are fetched once and hashed in memory (large
  S3 payloads by parallel ranged GETs, hashed while they arrive: s3parts.py).
* ``load()`` without step/epoch skips a damaged checkpoint with a warning and uses the previous valid one;
  with step/epoch a damaged one raises ``CheckpointCorrupt``. A manifest of a format this grd does not read
  raises ``CheckpointTooNew`` from ``latest()``, ``load()`` and ``checkpoints()`` (never skipped for an older
  checkpoint: a newer grd's work is not lost by a downgrade); ``verify()`` reports it as its problem.
* A same-step re-save may replace a checkpoint while it is read (on object stores its old payload objects are
  deleted once the new manifest is in: commit.py): damage found after the manifest was read sends the reader
  back to the manifest, and when it has been replaced, the new version is read instead (at most
  ``_REREADS`` times), so a re-save never makes ``latest()`` or ``load()`` step back to an older checkpoint.
* Nothing in the store is trusted (safe_io.py): LATEST.json and manifests are read with a size cap; on local
  disk a checkpoint directory or file that is a symbolic link, a FIFO or a device is refused, never followed
  or waited on, and counts as a damaged checkpoint (the same warning, the same fallback). ``prefixes()``
  walks below a run only into directories named by the run-key rule, never through a symbolic link.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any, Final, TypeVar

import fsspec

from grd_blocks.checkpoint.payload.digest import verify_bytes, verify_fd
from grd_blocks.checkpoint.payload.handlers import decode_state, restore_into
from grd_blocks.checkpoint.payload.manifest import (
    FileEntry,
    LatestPointer,
    Manifest,
    parse_latest,
    parse_manifest,
)
from grd_blocks.checkpoint.payload.serialization import (
    JSON_FILE,
    MAX_JSON_BYTES,
    Blob,
    VerifiedFile,
    deserialize,
)
from grd_blocks.checkpoint.refs import CheckpointRef
from grd_blocks.checkpoint.storage.fsio import guard
from grd_blocks.checkpoint.storage.layout import (
    LATEST_NAME,
    MANIFEST_NAME,
    OPENED_NAME,
    basename,
    checkpoint_dirname,
    join,
    parse_dirname,
    validate_run_key,
)
from grd_blocks.checkpoint.storage.s3parts import get_verified
from grd_blocks.checkpoint.storage.safe_io import (
    MANIFEST_LIMIT,
    POINTER_LIMIT,
    open_local,
    read_local,
    read_remote,
)
from grd_blocks.errors import (
    CheckpointCorrupt,
    CheckpointNotFound,
    CheckpointTooNew,
    InvalidRunKey,
    UsageError,
)

logger = logging.getLogger("grd.checkpoint")

T = TypeVar("T")
_REREADS: Final = 3
"""Times one read follows a checkpoint's manifest to a newer version of the same step (reader invariants)."""

Fetched = dict[str, Blob | VerifiedFile]
NESTED_DEPTH: Final = 3
"""How far ``prefixes()`` looks below a run: ``commands/{phase}.{command}/partial`` is three levels."""


def _enterable(name: str) -> bool:
    """A directory name ``prefixes()`` looks into: one that passes the run-key rule and is not hidden."""
    try:
        validate_run_key(name)
    except InvalidRunKey:
        return False
    return not name.startswith(".")


class RunReader:
    """Read-only access to the checkpoints under one run prefix (``url``; ``path`` inside ``fs``)."""

    def __init__(self, url: str, *, fs: fsspec.AbstractFileSystem, path: str, local: bool) -> None:
        self.url = url.rstrip("/")
        self.fs = fs
        self.path = path.rstrip("/")
        self.run_key = basename(self.url)
        self._local = local

    # ------------------------------------------------------------------ manifests and pointers
    def _invalidate(self) -> None:
        self.fs.invalidate_cache(self.path)

    def _ref(self, manifest: Manifest) -> CheckpointRef:
        name = checkpoint_dirname(manifest.unit, manifest.index)
        return CheckpointRef(
            run_key=self.run_key,
            unit=manifest.unit,
            index=manifest.index,
            url=join(self.url, name),
            created_at=manifest.created_at,
            metrics=dict(manifest.metrics),
            size_bytes=manifest.size_bytes,
            writer=manifest.writer,
            metadata=dict(manifest.metadata),
            step=manifest.step,
            epoch=manifest.epoch,
            handlers=dict(manifest.handlers),
        )

    def _read_small(self, parts: tuple[str, ...], cap: int) -> bytes:
        """The bytes of ``{path}/{parts...}`` (a pointer or a manifest), at most ``cap`` (safe_io.py):
        ``FileNotFoundError`` if absent, ``CheckpointCorrupt`` if not a regular file or over ``cap``."""
        with guard(self.url, f"read {'/'.join(parts)}", missing_ok=True):
            if self._local:
                return read_local(self.path, parts, cap, self.url)
            return read_remote(self.fs, join(self.path, *parts), cap, join(self.url, *parts))

    def was_opened(self) -> bool:
        """Whether a command ever opened this prefix under grd (``RunCheckpoints.mark_opened`` left its
        ``.opened`` marker); False when that cannot be read."""
        try:
            with guard(self.url, f"look for {OPENED_NAME}", missing_ok=True):
                return bool(self.fs.exists(join(self.path, OPENED_NAME)))
        except Exception:  # a store that cannot be read says nothing either way
            return False

    def _read_pointer(self) -> LatestPointer | None:
        """LATEST.json, or None when it is absent or not a valid pointer."""
        try:
            return parse_latest(self._read_small((LATEST_NAME,), POINTER_LIMIT), join(self.url, LATEST_NAME))
        except (FileNotFoundError, CheckpointCorrupt):
            return None

    def _read_manifest(self, name: str) -> Manifest:
        where = join(self.url, name, MANIFEST_NAME)
        try:
            data = self._read_small((name, MANIFEST_NAME), MANIFEST_LIMIT)
        except FileNotFoundError:
            raise CheckpointCorrupt(f"{where} is missing (the checkpoint was never committed)") from None
        manifest = parse_manifest(data, where)
        if checkpoint_dirname(manifest.unit, manifest.index) != name:
            raise CheckpointCorrupt(f"{where} describes {manifest.unit}_{manifest.index}, not {name}")
        return manifest

    def _size(self, name: str, file_name: str) -> int:
        """The size of a payload file (on local disk: a regular file, not a link; see safe_io.py)."""
        with guard(self.url, f"stat {name}/{file_name}", missing_ok=True):
            if not self._local:
                return int(self.fs.info(join(self.path, name, file_name))["size"])
            fd = open_local(self.path, (name, file_name), self.url)
            try:
                return os.fstat(fd).st_size
            finally:
                os.close(fd)

    def _check_sizes(self, name: str, manifest: Manifest) -> Manifest:
        """``manifest``, once every payload object it lists is there with its size."""
        for file_name, entry in manifest.files.items():
            stored = entry.object_name(file_name)
            try:
                size = self._size(name, stored)
            except FileNotFoundError:
                raise CheckpointCorrupt(f"{join(self.url, name, stored)} is missing") from None
            if size != entry.size:
                raise CheckpointCorrupt(
                    f"{join(self.url, name, stored)} is {size} bytes, its manifest says {entry.size}"
                )
        return manifest

    def _settled(self, name: str, manifest: Manifest, attempt: Callable[[Manifest], T]) -> T:
        """``attempt(manifest)``; when it finds damage and ``name``'s manifest has been replaced since it was
        read (a same-step re-save committed meanwhile), tries the new one (``_REREADS`` times at most)."""
        for _ in range(_REREADS):
            try:
                return attempt(manifest)
            except CheckpointCorrupt:
                try:
                    now = self._read_manifest(name)
                except CheckpointCorrupt:
                    now = manifest
                if now == manifest:
                    raise
                manifest = now
        return attempt(manifest)

    # ------------------------------------------------------------------ payload bytes
    def _fetch_remote(self, name: str, file_name: str, entry: FileEntry) -> Blob:
        stored = entry.object_name(file_name)
        where = join(self.url, name, stored)
        try:
            with guard(self.url, f"read {name}/{stored}", missing_ok=True):
                return get_verified(self.fs, join(self.path, name, stored), entry, where)
        except FileNotFoundError:
            raise CheckpointCorrupt(f"{where} is missing") from None

    def _fetch_local(
        self, name: str, file_name: str, entry: FileEntry, stack: contextlib.ExitStack
    ) -> Blob | VerifiedFile:
        stored = entry.object_name(file_name)
        where, path = join(self.url, name, stored), join(self.path, name, stored)
        try:
            with guard(self.url, f"open {name}/{stored}", missing_ok=True):
                fd = open_local(self.path, (name, stored), self.url)
        except FileNotFoundError:
            raise CheckpointCorrupt(f"{where} is missing") from None
        stack.callback(os.close, fd)
        with guard(self.url, f"read {name}/{file_name}"):
            size = os.fstat(fd).st_size
            if size != entry.size:
                raise CheckpointCorrupt(f"{where} is {size} bytes, its manifest says {entry.size}")
            if file_name == JSON_FILE:  # small (bounded by MAX_JSON_BYTES): read once, hash the bytes
                data = VerifiedFile(fd, path).read()
                verify_bytes(data, entry, where)
                return data
            verify_fd(fd, entry, where)
        return VerifiedFile(fd, path)

    @contextlib.contextmanager
    def _fetch_verified(self, name: str, manifest: Manifest) -> Iterator[Fetched]:
        """Every payload file of ``name``, size and digests checked (``CheckpointCorrupt`` if not)."""
        with contextlib.ExitStack() as stack:
            files: Fetched = {}
            for file_name, entry in manifest.files.items():
                if file_name == JSON_FILE and entry.size > MAX_JSON_BYTES:  # read whole to decode: bounded
                    raise CheckpointCorrupt(
                        f"{join(self.url, name, file_name)}: its manifest says {entry.size} bytes, more than "
                        f"any JSON payload grd writes ({MAX_JSON_BYTES}); it was damaged or not ours"
                    )
                if self._local:
                    files[file_name] = self._fetch_local(name, file_name, entry, stack)
                else:
                    files[file_name] = self._fetch_remote(name, file_name, entry)
            yield files

    # ------------------------------------------------------------------ finding checkpoints
    def _names(self) -> list[str]:
        """Checkpoint directory names present (committed or not), newest index first."""
        self._invalidate()
        try:
            with guard(self.url, "list checkpoints", missing_ok=True):
                entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        parsed = [(parse_dirname(basename(str(entry))), basename(str(entry))) for entry in entries]
        found = [(key, name) for key, name in parsed if key is not None]
        found.sort(key=lambda item: item[0][1], reverse=True)
        return [name for _, name in found]

    def _scan_newest(
        self, *, skip: str | None = None, below: tuple[int, str] | None = None, quiet: bool = False
    ) -> CheckpointRef | None:
        """Newest checkpoint whose manifest and sizes verify (optionally strictly older than ``below``)."""
        for name in self._names():
            if name == skip:
                continue
            try:
                manifest = self._read_manifest(name)
                if below is not None and self._ref(manifest).order >= below:
                    continue
                return self._ref(self._settled(name, manifest, functools.partial(self._check_sizes, name)))
            except CheckpointCorrupt as exc:
                if not quiet:
                    logger.warning("skipping checkpoint %s: %s", join(self.url, name), exc)
        return None

    def latest(self) -> CheckpointRef | None:
        """The newest committed checkpoint (O(1) requests via LATEST.json), or None if there is none."""
        found = self._latest(check_sizes=True)
        return found[0] if found is not None else None

    def _latest(self, *, check_sizes: bool) -> tuple[CheckpointRef, Manifest | None] | None:
        """``latest()``, plus the manifest when LATEST.json led to it (None after a fallback scan).

        ``check_sizes=False`` skips stat-ing the payload, for a caller that fetches and verifies it next.
        """
        self._invalidate()
        latest_url = join(self.url, LATEST_NAME)
        try:
            pointer = parse_latest(self._read_small((LATEST_NAME,), POINTER_LIMIT), latest_url)
            manifest = self._read_manifest(pointer.dirname)
            if (manifest.unit, manifest.index) != (pointer.unit, pointer.index):
                raise CheckpointCorrupt(f"{latest_url} names {pointer.dirname} but its fields disagree")
            if check_sizes:
                sized = functools.partial(self._check_sizes, pointer.dirname)
                manifest = self._settled(pointer.dirname, manifest, sized)
            return self._ref(manifest), manifest
        except FileNotFoundError:
            problem = f"{latest_url} is missing"
        except CheckpointCorrupt as exc:
            problem = str(exc)
        ref = self._scan_newest()
        if ref is not None:
            logger.warning("%s; falling back to the newest checkpoint that verifies: %s", problem, ref.url)
            return ref, None
        return None

    def first_after(self, ref: CheckpointRef | None) -> CheckpointRef | None:
        """The oldest committed checkpoint newer than ``ref`` (the oldest of all when None): one listing, then
        manifests from ``ref``'s index up, oldest first, until one is newer (a damaged one is passed over)."""
        floor = -1 if ref is None else ref.index
        for name in reversed(self._names()):
            parsed = parse_dirname(name)
            if parsed is None or parsed[1] < floor:
                continue
            try:
                found = self._ref(self._read_manifest(name))
            except CheckpointCorrupt:
                continue
            if ref is None or found.order > ref.order:
                return found
        return None

    def prefixes(self, *, depth: int = NESTED_DEPTH) -> list[str]:
        """Prefixes below this one that hold checkpoints (a directory with a LATEST.json or ``{unit}_{N}``
        directories), as ``/``-joined names relative to it (``commands/train.fit``,
        ``commands/train.fit/partial``, ``progress``), sorted, at most ``depth`` levels down; each directory
        is listed once. Only directories whose names pass the run-key rule are entered (no hidden or staging
        directory, no checkpoint directory); on local disk a symbolic link is never followed."""
        found: list[str] = []
        level = self._subdirectories("")[0]
        for _ in range(depth):
            below: list[str] = []
            for rel in level:
                children, holds = self._subdirectories(rel)
                if holds:
                    found.append(rel)
                below += children
            level = below
        return sorted(found)

    def _subdirectories(self, rel: str) -> tuple[list[str], bool]:
        """The enterable directories in ``{path}/{rel}`` (as relative names), and whether it holds
        checkpoints."""
        path = join(self.path, rel) if rel else self.path
        self.fs.invalidate_cache(path)
        try:
            with guard(self.url, f"list {rel or 'the run'}", missing_ok=True):
                entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return [], False
        children, holds = [], False
        for entry in entries:
            name = basename(str(entry["name"]))
            if name == LATEST_NAME or parse_dirname(name) is not None:
                holds = True
            elif entry.get("type") == "directory" and not entry.get("islink") and _enterable(name):
                children.append(f"{rel}/{name}" if rel else name)
        return sorted(children), holds

    def checkpoints(self) -> list[CheckpointRef]:
        """Every committed checkpoint (manifest present and parseable), oldest first."""
        refs: list[CheckpointRef] = []
        for name in self._names():
            try:
                refs.append(self._ref(self._read_manifest(name)))
            except CheckpointCorrupt as exc:
                logger.debug("not listing %s: %s", name, exc)
        return sorted(refs, key=lambda ref: ref.order)

    def find(self, *, step: int | None = None, epoch: int | None = None) -> CheckpointRef:
        """The committed checkpoint ``step_{step}`` / ``epoch_{epoch}``; ``CheckpointNotFound`` if absent."""
        if step is not None:
            name = checkpoint_dirname("step", step)
        elif epoch is not None:
            name = checkpoint_dirname("epoch", epoch)
        else:
            raise UsageError("find() needs step= or epoch=")
        try:
            return self._ref(self._read_manifest(name))
        except CheckpointCorrupt as exc:
            raise CheckpointNotFound(
                f"no committed checkpoint {join(self.url, name)} ({exc}); list them with `grd checkpoints ls`"
            ) from None

    # ------------------------------------------------------------------ loading
    def load(
        self,
        *,
        step: int | None = None,
        epoch: int | None = None,
        into: Mapping[str, Any] | None = None,
        map_location: Any = "cpu",
    ) -> dict[str, Any] | None:
        """The state of the latest valid checkpoint (or exactly ``step``/``epoch``); None if there is none.

        Every digest is checked. Without step/epoch a damaged checkpoint is skipped with a warning and the
        previous valid one is used; with step/epoch a damaged one raises ``CheckpointCorrupt``. Objects in
        ``into`` (modules, optimizers, schedulers, scalers, tensors, dicts) are restored in place.
        """
        if step is not None or epoch is not None:
            ref = self.find(step=step, epoch=epoch)
            return self._settled(ref.name, self._read_manifest(ref.name),
                                 functools.partial(self._load_version, ref, into, map_location))
        found = self._latest(check_sizes=False)  # fetching verifies every size and digest anyway
        candidate, known = found if found is not None else (None, None)
        while candidate is not None:
            try:
                manifest = known if known is not None else self._read_manifest(candidate.name)
                return self._settled(candidate.name, manifest,
                                     functools.partial(self._load_version, candidate, into, map_location))
            except CheckpointCorrupt as exc:  # its bytes, or what they decode to (a forged manifest)
                older = self._scan_newest(below=candidate.order)
                logger.warning(
                    "checkpoint %s is damaged (%s); falling back to %s",
                    candidate.url,
                    exc,
                    older.url if older else "no checkpoint",
                )
                candidate, known = older, None
        return None

    def _load_version(
        self, ref: CheckpointRef, into: Mapping[str, Any] | None, map_location: Any, manifest: Manifest
    ) -> dict[str, Any]:
        if manifest.payload_format == "dcp":  # sharded.py: read by every rank, never whole here
            raise UsageError(
                f"{ref.url} is a sharded checkpoint (torch.distributed.checkpoint, saved by "
                f"{manifest.metadata.get('world_size', 'several')} ranks); load it with load_sharded(), "
                "on every rank"
            )
        with self._fetch_verified(ref.name, manifest) as files:
            return self._decode(ref, manifest, files, into, map_location)

    def _decode(
        self,
        ref: CheckpointRef,
        manifest: Manifest,
        files: Fetched,
        into: Mapping[str, Any] | None,
        map_location: Any,
    ) -> dict[str, Any]:
        payload = deserialize(files, manifest.payload_format, where=ref.url, map_location=map_location)
        if not isinstance(payload, dict):
            raise CheckpointCorrupt(f"{ref.url}: payload is a {type(payload).__name__}, not a dict")
        if into:
            restore_into(into, payload, manifest.handlers)
        return decode_state(payload, manifest.handlers)

    def verify(self, ref: CheckpointRef | str) -> list[str]:
        """Problems found in a checkpoint (manifest, presence, sizes, digests); empty means it is sound."""
        name = ref if isinstance(ref, str) else ref.name

        def fetch(manifest: Manifest) -> None:  # one file at a time: a sharded checkpoint's shards add up
            for file_name, entry in manifest.files.items():
                with self._fetch_verified(name, replace(manifest, files={file_name: entry})):
                    pass

        try:
            self._settled(name, self._read_manifest(name), fetch)
        except (CheckpointCorrupt, CheckpointTooNew) as exc:  # too new: this grd cannot vouch for it
            return [str(exc)]
        return []
