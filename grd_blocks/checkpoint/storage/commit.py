"""The commit protocol: how a checkpoint's files become visible all at once, or not at all.

Invariant: a reader sees either no checkpoint ``{unit}_{N}`` or a complete one whose manifest lists exactly
the payload bytes that are there. One small abstract type, two implementations:

* ``RenameCommit`` (local disk): payload and manifest are written into a staging directory *inside the run
  directory* (same filesystem, so ``rename`` is atomic), fsynced, then renamed into place; the run
  directory is fsynced after. ``LATEST.json`` is replaced through a temp file in the same directory +
  ``os.replace``, under an exclusive ``flock`` of the run directory held from reading the pointer to
  replacing it (every update opens the directory anew, so it excludes other threads as well as processes;
  on a filesystem that cannot lock a directory, e.g. NFS, ``{run}/.LATEST.lock`` is locked instead).
* ``ManifestLastCommit`` (object stores: S3, memory, ...): payload objects are written first, the manifest
  object last; a single PUT (or a completed multipart upload, for large S3 payloads: s3parts.py) is atomic,
  so the manifest's appearance is the commit. ``LATEST.json`` is updated with conditional PUTs where the S3
  server honours them (pointer.py); elsewhere with a plain PUT, and ``update_pointer`` says it was not
  atomic.

``update_pointer(path, decide)`` is the one way LATEST.json changes: read it, ``decide`` what to write (None:
leave it), write. Where it returns True no other update of that pointer came in between, so LATEST only ever
moves the way every ``decide`` moves it. A pointer that is absent, damaged or hostile (a link, a FIFO, longer
than ``safe_io.POINTER_LIMIT``) reaches ``decide`` as None.

A retry that saves the same N again replaces the previous version: on disk the new directory and the old one
are exchanged in one ``renameat2(RENAME_EXCHANGE)`` (where the filesystem cannot, the old one is renamed aside
first) (writers racing on the same N take turns: the last one's version stays, none fails). On object stores a
checkpoint written into an empty prefix uses the plain names (``state.pt``); any later version of it goes up
beside what is there, under names of its own (``state.pt~{token}``, recorded in the manifest as ``stored_as``,
so writers re-saving N at once never write the same object), then one PUT replaces the manifest, and only then
are the objects the replaced manifest listed deleted: at every moment N is the old version or the new one,
never absent, so ``latest()`` never steps back to N-1 (a reader that read the old manifest and finds its
payload gone reads the manifest again: reader.py). A crash before the manifest PUT leaves the old version.
Objects no manifest lists (a crashed writer's) are deleted by a later commit of that N once ``STALE_AFTER_S``
old, so a live concurrent writer's upload is never pulled from under it.
Deleting a checkpoint removes its manifest first, so a half-deleted checkpoint is invisible. On local disk a
checkpoint "directory" that is a symbolic link (or anything but a directory) is refused with
``CheckpointCorrupt``, never followed: nothing outside the store is ever deleted.

A sharded save (checkpoint/sharded.py) has other writers (every rank) put the files: ``stage`` gives them a
fresh folder inside the run directory (local disk) or the checkpoint's own prefix (object stores, where every
file name carries the save's token), and ``commit_staged`` writes the manifest and commits exactly as
``commit`` does (rename, or the manifest PUT followed by deleting what it replaced).

The manifest content is asked for (``manifest(objects)``, ``objects`` naming the object each file went to)
only after every payload file is written, so the caller can hash the payload while it is being written; where
``takes_streams`` (local disk, S3), a payload may even still be being serialized when ``commit`` starts
(serialization.PieceStream), and is written or sent piece by piece as it is produced, each piece released once
it is. The stream holds at most ``stream_window`` pieces (memory does not grow with the state).
On local disk, after a commit, staging entries that crashed writers left behind are swept (staging.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import shutil
import stat
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime

import fsspec

from grd_blocks.checkpoint.payload.manifest import parse_manifest
from grd_blocks.checkpoint.payload.serialization import (
    PIECE_BYTES,
    STREAM_WINDOW,
    TEXT_PIECE_BYTES,
    Blob,
    Payload,
    PieceStream,
    piece_size_for,
    pieces_of,
)
from grd_blocks.checkpoint.storage.layout import (
    LOCK_NAME,
    MANIFEST_NAME,
    OLD_PREFIX,
    TMP_PREFIX,
    basename,
    join,
)
from grd_blocks.checkpoint.storage.s3parts import drop_folder, is_s3, put_object, stream_window, takes_streams
from grd_blocks.checkpoint.storage.safe_io import (
    MANIFEST_LIMIT,
    POINTER_LIMIT,
    describe,
    read_local,
    read_remote,
)
from grd_blocks.checkpoint.storage.staging import STALE_AFTER_S, remove_tree, staging_name, sweep_stale
from grd_blocks.errors import CheckpointCorrupt, CheckpointError

logger = logging.getLogger("grd.checkpoint")

Decide = Callable[[bytes | None], bytes | None]
ManifestFor = Callable[[Mapping[str, str]], bytes]
"""Builds the manifest once the payload is written, given the object each file was written to (file name ->
object name under the checkpoint directory; the same name except for an object store's same-step re-save)."""


class CommitProtocol(ABC):
    """Makes a checkpoint directory and the LATEST pointer visible atomically on one kind of filesystem."""

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs

    @property
    def takes_streams(self) -> bool:
        """Whether ``commit`` should get a large payload as a ``PieceStream`` (it writes the pieces while the
        rest is serialized) rather than whole."""
        return False

    @property
    def stream_window(self) -> int | None:
        """Pieces a stream given to ``commit`` may hold at once (serialization.PieceStream); None: any."""
        return STREAM_WINDOW

    def piece_size(self, state_bytes: int) -> int:
        """The piece size of a stream given to ``commit`` for a state of ``state_bytes`` bytes of tensors."""
        return PIECE_BYTES  # an S3 part (at least 5 MiB but the last): s3parts sends each piece as one

    @property
    def text_piece_size(self) -> int:
        """The piece size of a stream of JSON text given to ``commit`` (a run's progress snapshot)."""
        return PIECE_BYTES

    @property
    def aligned_pieces(self) -> bool:
        """Whether a stream given to ``commit`` should hold page-aligned pieces (it writes them with
        ``O_DIRECT``)."""
        return False

    @abstractmethod
    def commit(self, ckpt_dir: str, files: Mapping[str, Payload], manifest: ManifestFor) -> None:
        """Write ``files``, then ``manifest(objects)`` as ``MANIFEST.json``: ``ckpt_dir`` appears complete or
        not at all (a same-step re-save: stays the old version until it is the new one)."""

    @abstractmethod
    def update_pointer(self, path: str, decide: Decide, *, url: str) -> bool:
        """Read the pointer at ``path``, write ``decide(current)`` unless it is None; True when no other
        update came in between (module docstring). ``url`` (the run's) names it in messages."""

    @property
    def stages_in_place(self) -> bool:
        """Whether ``stage`` hands out the checkpoint's own folder (object stores), so that the files of a
        staged save must carry names no earlier version used; False: a fresh folder of its own (local)."""
        return False

    @abstractmethod
    def stage(self, ckpt_dir: str) -> str:
        """Where other writers (every rank of a sharded save) put the files of the next version of
        ``ckpt_dir``: a fresh, never-reused folder (local disk), or ``ckpt_dir`` itself where the manifest's
        PUT is the commit (``stages_in_place``: the files' names are then fresh); ``commit_staged`` makes it
        visible, ``discard`` drops it."""

    @abstractmethod
    def commit_staged(self, ckpt_dir: str, staged: str, manifest: bytes) -> None:
        """Write ``manifest`` as the ``MANIFEST.json`` of ``staged`` (every file it lists is already written
        and durable there) and make it ``ckpt_dir``, all at once (the same guarantees as ``commit``)."""

    @abstractmethod
    def discard(self, staged: str, names: Iterable[str]) -> None:
        """Drop what a staged save that will not be committed wrote (``names``: its files)."""

    def remove(self, ckpt_dir: str) -> None:
        """Delete a checkpoint: its manifest first (it vanishes at once), then the rest."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(join(ckpt_dir, MANIFEST_NAME))
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(ckpt_dir, recursive=True)

    def sweep(self, run_dir: str) -> list[str]:
        """Remove what crashed writers left in ``run_dir``; the names removed (none on object stores)."""
        return []


def _write_synced(path: str, data: Payload) -> None:
    """Write ``data`` to ``path`` and fsync it; a stream's pieces as each is produced (``_write_stream``), so
    the disk works while the rest is serialized and the final fsync has little left to wait for."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        if isinstance(data, PieceStream):
            _write_stream(fd, path, data)
        else:
            for whole in pieces_of(data):
                _write_all(fd, whole)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_stream(fd: int, path: str, stream: PieceStream) -> None:
    """Write ``stream``'s pieces to ``fd`` (the file ``path``) in order, each released once written (the
    store is one of the stream's readers). A page-aligned full piece goes to the disk straight from its
    buffer through a second, ``O_DIRECT`` descriptor of the same file: no copy into the page cache, and the
    write is on the disk when it returns (the final fsync still makes the file's size and blocks durable).
    Anything else (the last, shorter piece; a filesystem that refuses ``O_DIRECT``, such as tmpfs) goes
    through the page cache with its write-back started at once (``_start_writeback``)."""
    direct = _open_direct(path)
    try:
        offset = 0
        for number, piece in enumerate(stream):
            view = memoryview(piece).cast("B")
            if direct is not None and isinstance(piece, mmap.mmap) and offset % _DIRECT_ALIGN == 0:
                written = _write_direct(direct, view, offset)
                if written < len(view):  # refused part way: this file goes through the page cache
                    os.close(direct)
                    direct = None
                    _pwrite_all(fd, view[written:], offset + written)
                    _start_writeback(fd, offset + written, len(view) - written)
            else:
                _pwrite_all(fd, view, offset)
                _start_writeback(fd, offset, len(view))
            offset += len(view)
            stream.release(number)
    finally:
        if direct is not None:
            os.close(direct)


_DIRECT_ALIGN = 4096
"""Alignment of an ``O_DIRECT`` write's buffer, length and offset that every Linux filesystem accepts."""


def page_cache_kept() -> bool:
    """Whether ``GRD_CHECKPOINT_DIRECT_IO=0`` asks local saves to leave what they write in the page cache
    (no ``O_DIRECT`` for single-file saves, no dropped pages for sharded ones)."""
    return os.environ.get("GRD_CHECKPOINT_DIRECT_IO", "1") == "0"


def _open_direct(path: str) -> int | None:
    """An ``O_DIRECT`` descriptor for writing the existing file ``path``, or None where the filesystem or
    the platform has none (``page_cache_kept()`` also says none)."""
    flag = getattr(os, "O_DIRECT", None)
    if flag is None or page_cache_kept():
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise


def _write_direct(fd: int, view: memoryview, offset: int) -> int:
    """Write ``view`` at ``offset`` through the ``O_DIRECT`` descriptor ``fd``; how many bytes were written
    before the filesystem refused the rest (``EINVAL``: its alignment rules are stricter than
    ``_DIRECT_ALIGN``, or a short write left the rest unaligned)."""
    done = 0
    while done < len(view):
        try:
            done += os.pwrite(fd, view[done:], offset + done)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return done
    return done


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _write_all(fd: int, data: Blob) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` to the disk without waiting
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``; nothing where libc has no such call). Durability still
    comes from the fsync that follows: this only moves the disk's work earlier (a 512 MiB write + fsync
    went from ~1,080 to ~1,420 MiB/s on the benchmark disk)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # a failure only loses the head start


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_INSTALL_TRIES = 50


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LIBC = ctypes.CDLL(None, use_errno=True)
_RENAMEAT2 = getattr(_LIBC, "renameat2", None)
_SYNC_FILE_RANGE = getattr(_LIBC, "sync_file_range", None)
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def _exchange(staging: str, ckpt_dir: str) -> bool:
    """Swap ``staging`` and ``ckpt_dir`` in one step (``renameat2(RENAME_EXCHANGE)``): True when done; False
    where the kernel, libc or filesystem cannot (the caller then moves the old version aside first);
    ``FileNotFoundError`` when ``ckpt_dir`` is gone (another writer moved it aside)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(staging), _AT_FDCWD, os.fsencode(ckpt_dir), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    if code == errno.ENOENT:
        raise FileNotFoundError(code, os.strerror(code), ckpt_dir)
    raise OSError(code, os.strerror(code), ckpt_dir)


def _install(staging: str, ckpt_dir: str, run_dir: str, name: str) -> list[str]:
    """Rename ``staging`` to ``ckpt_dir``; where a version is there, exchange the two in one step, so N is
    never absent for a reader (the directories that end up holding old versions are returned, to delete).
    Where the filesystem cannot exchange, the old version is moved aside first (N is absent for a moment).
    Writers saving the same N at once each win in turn, the last one's version stays: a version another
    writer moved aside first, or one that appeared after the move, is only another turn of the loop."""
    moved: list[str] = []
    for _ in range(_INSTALL_TRIES):
        try:
            os.rename(staging, ckpt_dir)  # replaces nothing but an empty directory
            return moved
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        try:
            if _exchange(staging, ckpt_dir):
                return [*moved, staging]  # staging now holds the version it replaced
        except FileNotFoundError:
            continue  # moved aside by another writer: N is free again
        old = os.path.join(run_dir, staging_name(OLD_PREFIX, name))
        try:
            os.rename(ckpt_dir, old)
            moved.append(old)
        except FileNotFoundError:
            pass  # another writer moved it aside first
    raise CheckpointError(
        f"{ckpt_dir}: {_INSTALL_TRIES} other writers replaced this checkpoint while it was being saved; "
        "save it again (or give concurrent writers distinct steps)"
    )


class RenameCommit(CommitProtocol):
    """Local disk: stage in ``{run_dir}/.tmp-{unit}_{N}-...``, fsync, ``rename`` into place."""

    @property
    def takes_streams(self) -> bool:
        return True  # each piece is written as soon as it is serialized: memory stays a few pieces

    @property
    def aligned_pieces(self) -> bool:
        return True  # full pieces go to the disk with O_DIRECT (_write_stream)

    def piece_size(self, state_bytes: int) -> int:
        return piece_size_for(state_bytes)  # the stream's memory a small share of a small state too

    @property
    def text_piece_size(self) -> int:
        return TEXT_PIECE_BYTES  # no buffer of a progress snapshot large enough to raise mmap's threshold

    def commit(self, ckpt_dir: str, files: Mapping[str, Payload], manifest: ManifestFor) -> None:
        run_dir, name = os.path.dirname(ckpt_dir), basename(ckpt_dir)
        os.makedirs(run_dir, exist_ok=True)
        staging = os.path.join(run_dir, staging_name(TMP_PREFIX, name))
        os.mkdir(staging)
        try:
            for file_name, data in files.items():
                _write_synced(os.path.join(staging, file_name), data)
            content = manifest({name: name for name in files})
        except BaseException:
            remove_tree(staging)
            raise
        self.commit_staged(ckpt_dir, staging, content)

    def stage(self, ckpt_dir: str) -> str:
        """``{run_dir}/.tmp-{unit}_{N}-{token}-{tag}-{pid}/``, created empty: unique to this call, inside the
        run directory (same filesystem, so the commit is one rename), invisible to readers, and swept once
        this process is gone (staging.py)."""
        run_dir = os.path.dirname(ckpt_dir)
        os.makedirs(run_dir, exist_ok=True)
        staging = os.path.join(run_dir, staging_name(TMP_PREFIX, basename(ckpt_dir)))
        os.mkdir(staging)
        return staging

    def commit_staged(self, ckpt_dir: str, staged: str, manifest: bytes) -> None:
        run_dir, name = os.path.dirname(ckpt_dir), basename(ckpt_dir)
        try:
            _write_synced(os.path.join(staged, MANIFEST_NAME), manifest)
            _fsync_dir(staged)
            olds = _install(staged, ckpt_dir, run_dir, name)
            _fsync_dir(run_dir)
        except BaseException:
            remove_tree(staged)
            raise
        for old in olds:
            remove_tree(old)

    def discard(self, staged: str, names: Iterable[str] = ()) -> None:
        remove_tree(staged)

    def sweep(self, run_dir: str) -> list[str]:
        return sweep_stale(run_dir)

    def remove(self, ckpt_dir: str) -> None:
        """Delete a checkpoint directory, manifest first; refuse anything that is not a directory (a link
        to a directory elsewhere is never followed)."""
        try:
            mode = os.lstat(ckpt_dir).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(mode):
            raise _not_a_checkpoint(ckpt_dir, describe(ckpt_dir))
        try:
            fd = os.open(ckpt_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:  # swapped for a link since the lstat
            if os.path.islink(ckpt_dir):
                raise _not_a_checkpoint(ckpt_dir, describe(ckpt_dir)) from None
            raise exc from None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(MANIFEST_NAME, dir_fd=fd)  # a link named MANIFEST.json: unlinked, not its target
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(ckpt_dir)  # never follows links inside (and refuses a top that became one)

    def update_pointer(self, path: str, decide: Decide, *, url: str) -> bool:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        with _flocked(directory, url):
            name = basename(path)
            data = decide(_pointer_or_none(lambda: read_local(directory, (name,), POINTER_LIMIT, url)))
            if data is not None:
                self._replace(path, data)
        return True

    def _replace(self, path: str, data: bytes) -> None:
        directory = os.path.dirname(path)
        staging = os.path.join(directory, staging_name(TMP_PREFIX, basename(path)))
        try:
            _write_synced(staging, data)
            os.replace(staging, path)
            _fsync_dir(directory)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            raise


def _pointer_or_none(read: Callable[[], bytes]) -> bytes | None:
    """What ``read`` returns, or None when the pointer is absent or refused (a link, a FIFO, too long: logged,
    then treated as absent, so ``decide`` falls back to the newest checkpoint that verifies)."""
    try:
        return read()
    except FileNotFoundError:
        return None
    except CheckpointCorrupt as exc:
        logger.warning("%s; treating it as absent", exc)
        return None


def _not_a_checkpoint(path: str, found: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(
        f"{path} is {found}, not a checkpoint directory; grd deletes only directories it wrote and never "
        "follows a link out of the store (remove the link yourself if it is not needed)"
    )


@contextlib.contextmanager
def _flocked(directory: str, where: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` itself (nothing extra appears in it); where the
    filesystem refuses to lock a directory (NFS), on the regular file ``{directory}/.LATEST.lock``."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            os.close(fd)
            fd = _lock_file(os.path.join(directory, LOCK_NAME), join(where, LOCK_NAME))
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_file(path: str, where: str) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        if os.path.islink(path):
            raise CheckpointCorrupt(f"{where} is {describe(path)}, not grd's lock file; remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointCorrupt(f"{where} is {describe(path)}, not grd's lock file; remove it")
    return fd


class ManifestLastCommit(CommitProtocol):
    """Object stores: payload objects first, the manifest object last (its PUT is the commit)."""

    @property
    def takes_streams(self) -> bool:
        return takes_streams(self.fs)  # S3: parts go up as they are serialized

    @property
    def stream_window(self) -> int | None:
        return stream_window(self.fs)  # every transfer thread busy, as many pieces ready (128 MiB)

    def commit(self, ckpt_dir: str, files: Mapping[str, Payload], manifest: ManifestFor) -> None:
        manifest_path = join(ckpt_dir, MANIFEST_NAME)
        present = self._present(ckpt_dir)  # one LIST; usually empty
        replaced = self._listed_by(manifest_path) if MANIFEST_NAME in present else set()
        token = uuid.uuid4().hex[:12]
        objects = {name: f"{name}~{token}" if present else name for name in files}  # never an existing name
        for file_name, data in files.items():
            put_object(self.fs, join(ckpt_dir, objects[file_name]), data)  # S3: parallel parts, whole or not
        self.fs.pipe_file(manifest_path, manifest(objects))  # one PUT: the old version until now, the new one
        ours = {*objects.values(), MANIFEST_NAME}
        for name, age_s in present.items():  # the replaced version's; stale leftovers
            if name not in ours and (name in replaced or (age_s is not None and age_s > STALE_AFTER_S)):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(join(ckpt_dir, name), recursive=True)

    def remove(self, ckpt_dir: str) -> None:
        super().remove(ckpt_dir)
        drop_folder(self.fs, ckpt_dir)  # SeaweedFS would list the emptied prefix for ever

    @property
    def stages_in_place(self) -> bool:
        return True

    def stage(self, ckpt_dir: str) -> str:
        return ckpt_dir  # the staged files' names are fresh (the caller's token); the manifest PUT commits

    def commit_staged(self, ckpt_dir: str, staged: str, manifest: bytes) -> None:
        manifest_path = join(ckpt_dir, MANIFEST_NAME)
        present = self._present(ckpt_dir)
        replaced = self._listed_by(manifest_path) if MANIFEST_NAME in present else set()
        listed = parse_manifest(manifest, manifest_path)
        ours = {*(entry.object_name(name) for name, entry in listed.files.items()), MANIFEST_NAME}
        self.fs.pipe_file(manifest_path, manifest)  # one PUT: the old version until now, the new one
        for name, age_s in present.items():  # the replaced version's; stale leftovers
            if name not in ours and (name in replaced or (age_s is not None and age_s > STALE_AFTER_S)):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(join(ckpt_dir, name), recursive=True)

    def discard(self, staged: str, names: Iterable[str] = ()) -> None:
        for name in names:  # only this save's objects: ``staged`` may hold a committed version
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(join(staged, name))

    def _present(self, ckpt_dir: str) -> dict[str, float | None]:
        """Names directly under ``ckpt_dir`` now, with their age in seconds where the store says (empty when
        there is nothing)."""
        self.fs.invalidate_cache(ckpt_dir)
        try:
            entries = self.fs.ls(ckpt_dir, detail=True)
        except FileNotFoundError:
            return {}
        return {basename(str(entry["name"])): _age_s(entry) for entry in entries}

    def _listed_by(self, manifest_path: str) -> set[str]:
        """The objects the manifest at ``manifest_path`` lists (none when it is gone or damaged: its payload
        is then only a leftover, deleted once stale)."""
        try:
            listed = parse_manifest(read_remote(self.fs, manifest_path, MANIFEST_LIMIT, manifest_path),
                                    manifest_path)
        except (FileNotFoundError, CheckpointCorrupt):
            return set()
        return {entry.object_name(name) for name, entry in listed.files.items()}

    def update_pointer(self, path: str, decide: Decide, *, url: str) -> bool:
        if is_s3(self.fs):
            from grd_blocks.checkpoint.storage import pointer  # botocore is imported only once S3 is in use

            if pointer.conditional_writes(self.fs, path):
                pointer.update_conditional(self.fs, path, decide, url=url)
                return True
        where = join(url, basename(path))
        data = decide(_pointer_or_none(lambda: read_remote(self.fs, path, POINTER_LIMIT, where)))
        if data is not None:
            self.fs.pipe_file(path, data)
        return False


def _age_s(entry: Mapping[str, object]) -> float | None:
    """How long ago an object was written, from its ``ls`` entry (S3: LastModified, memory: created)."""
    modified = entry.get("LastModified", entry.get("created"))
    if isinstance(modified, datetime):
        return time.time() - modified.timestamp()
    if isinstance(modified, int | float):
        return time.time() - float(modified)
    return None


def protocol_for(fs: fsspec.AbstractFileSystem) -> CommitProtocol:
    """``RenameCommit`` for the local filesystem, ``ManifestLastCommit`` for everything else."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return RenameCommit(fs)
    return ManifestLastCommit(fs)
