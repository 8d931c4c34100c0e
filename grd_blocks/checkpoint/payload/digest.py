"""Digests of payload files, computed and checked on several cores with as little copying as we can.

Invariants:

* ``digest_later(data, algorithm)`` yields the format-2 ``FileEntry`` of ``data`` (manifest.py): the
  ``algorithm`` digest (hashes.py) of each ``CHUNK``-sized piece, and the whole-file value derived from those
  (``hashes.combine``), so every byte is hashed exactly once. It runs in helper threads (hashlib and blake3
  release the GIL), overlapping whatever the caller does meanwhile (writing the bytes). A ``PieceStream`` is
  hashed piece by piece as it is produced, each piece released once hashed.
* ``verify_fd(fd, entry, where)`` reads the file through the given descriptor only (so it describes the inode
  the caller holds open, whatever happens to the path meanwhile) and raises ``CheckpointCorrupt`` naming
  ``where`` unless its size and every digest match: the chunk digests in parallel when the entry has them
  (then, for a format-2 entry, that its whole-file value agrees with them), else (a format-1 entry of one
  chunk or less) the whole-file sha256, reading the next piece while the previous one is hashed.
* ``hash_later(piece, algorithm)`` + ``check_pieces(futures, entry, where)`` let a download hash each chunk as
  soon as it has arrived and check them all once the last one has; ``InOrderHasher`` hashes a download that
  arrives in ranges, out of order, as the whole-file sha256 of a format-1 entry without chunks: each range as
  soon as every range before it is in (s3parts.py).
* An algorithm whose package is missing raises ``hashes.DigestUnavailable`` before any byte is read.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from grd_blocks.checkpoint.payload import hashes
from grd_blocks.checkpoint.payload.manifest import FileEntry, sha256_hex
from grd_blocks.checkpoint.payload.serialization import PIECE_BYTES, Blob, Payload, Pieces, PieceStream
from grd_blocks.errors import CheckpointCorrupt

CHUNK = PIECE_BYTES
T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_buffers = threading.local()


def _hasher_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            workers = max(2, min(8, os.cpu_count() or 2))
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grd-digest")
        return _pool


def _later(function: Callable[..., T], *args: Any) -> Future[T]:
    """``function(*args)`` on the hasher pool; in this thread once the pool refuses work (interpreter exit,
    where a progress run's last snapshot is still saved from an ``atexit`` handler)."""
    try:
        return _hasher_pool().submit(function, *args)
    except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
        done: Future[T] = Future()
        try:
            done.set_result(function(*args))
        except BaseException as exc:  # handed to whoever waits, as the pool would
            done.set_exception(exc)
        return done


def _forget_pool_after_fork() -> None:
    """A forked child has none of the parent's threads: it starts a pool of its own."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def digest_later(data: Payload | Blob, algorithm: str) -> Callable[[], FileEntry]:
    """Start hashing ``data`` with ``algorithm``; the returned function waits and gives its ``FileEntry``."""
    function = hashes.function(algorithm)
    if isinstance(data, PieceStream):
        return _StreamDigest(data, algorithm, function).entry
    size, step = len(data), data.piece_size if isinstance(data, Pieces) else CHUNK
    if isinstance(data, Pieces):  # one chunk per piece, whatever the pieces' size
        pieces = [_later(function, piece) for piece in data.pieces]
    else:
        view = memoryview(data)
        pieces = [_later(function, view[start : start + CHUNK]) for start in range(0, size, CHUNK)]

    def entry() -> FileEntry:
        chunks = tuple(piece.result() for piece in pieces)
        return FileEntry(size, hashes.combine(algorithm, chunks), step, chunks, digest=algorithm)

    return entry


class _StreamDigest:
    """Hashes a ``PieceStream`` as it is produced, on a thread of its own: each piece once, for its chunk
    digest, then ``release``s it (the digest is one of the stream's readers)."""

    def __init__(self, stream: PieceStream, algorithm: str, function: Callable[[Blob], str]) -> None:
        self._stream, self._algorithm, self._function = stream, algorithm, function
        self._chunks: list[str] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="grd-digest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        number = 0
        while True:
            try:
                piece = self._stream.piece(number)
            except BaseException as exc:  # the producer's failure, or a stop: raised by ``entry``
                self._error = exc
                return
            if piece is None:
                return
            try:
                self._chunks.append(self._function(piece))
            except BaseException as exc:  # hashing's own failure: no release will come, nobody waits
                self._error = exc
                self._stream.fail(exc)
                return
            self._stream.release(number)
            number += 1

    def entry(self) -> FileEntry:
        """The stream's ``FileEntry``, once every piece is hashed (raises what stopped the hashing)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        chunks, algorithm, size = tuple(self._chunks), self._algorithm, self._stream.size()
        step = self._stream.piece_size
        return FileEntry(size, hashes.combine(algorithm, chunks), step, chunks, digest=algorithm)


def _read_into(fd: int, buffer: bytearray | memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buffer], offset)
    data = os.pread(fd, len(buffer), offset)
    buffer[: len(data)] = data
    return len(data)


def _read_fully(fd: int, buffer: bytearray, offset: int, length: int) -> int:
    view, done = memoryview(buffer), 0
    while done < length:
        count = _read_into(fd, view[done:length], offset + done)
        if count == 0:
            break
        done += count
    return done


def _chunk_digest(function: Callable[[Blob], str], fd: int, offset: int, length: int) -> str | None:
    """``function``'s digest of ``length`` bytes at ``offset`` (None if the file is shorter), read into a
    per-thread buffer."""
    buffer: bytearray | None = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) < length:
        buffer = _buffers.buffer = bytearray(max(length, CHUNK))
    if _read_fully(fd, buffer, offset, length) != length:
        return None
    return function(memoryview(buffer)[:length])


def sha256_fd(fd: int, size: int) -> tuple[str, int]:
    """``(hex sha256, bytes read)`` of the first ``size`` bytes of ``fd`` (fewer if the file is shorter)."""
    if size <= CHUNK:
        data = os.pread(fd, size, 0)
        return sha256_hex(data), len(data)
    digest = hashlib.sha256()
    buffers = (bytearray(CHUNK), bytearray(CHUNK))
    pending: Future[None] | None = None
    offset = turn = 0
    try:
        while offset < size:
            buffer = buffers[turn % 2]  # the other buffer may be being hashed right now
            count = _read_into(fd, buffer, offset)
            if pending is not None:
                pending.result()
                pending = None
            if count == 0:
                break
            count = min(count, size - offset)
            pending = _later(digest.update, memoryview(buffer)[:count])
            offset += count
            turn += 1
    finally:
        if pending is not None:
            pending.result()
    return digest.hexdigest(), offset


def hash_later(piece: memoryview, algorithm: str) -> Future[str | None]:
    """Start hashing ``piece`` (one chunk of a payload) on the hasher pool; the future gives its digest."""
    return _later(hashes.function(algorithm), piece)


def check_pieces(futures: list[Future[str | None]], entry: FileEntry, where: str) -> None:
    """Wait for every chunk digest in ``futures`` (in chunk order), then raise ``CheckpointCorrupt`` naming
    ``where`` and the byte range of the first that differs from ``entry.chunks`` (or, for a format-2 entry,
    when its whole-file value does not agree with its chunks)."""
    wait(futures)  # all of them, even after a failure: the caller may close the file once this returns
    step = entry.chunk_size or entry.size
    for number, (future, expected) in enumerate(zip(futures, entry.chunks, strict=True)):
        actual = future.result()
        if actual != expected:
            raise CheckpointCorrupt(
                f"{where}: bytes {number * step}..{min(entry.size, (number + 1) * step)} have "
                f"{entry.algorithm} digest {actual}, its manifest says {expected}"
            )
    if entry.digest is not None and hashes.combine(entry.digest, entry.chunks) != entry.whole:
        raise CheckpointCorrupt(
            f"{where}: its manifest's hash {entry.whole} is not the {entry.digest} of its chunk digests; "
            "the manifest was damaged or not written by grd"
        )


def check_sha256(digest: str | None, entry: FileEntry, where: str) -> None:
    """Raise ``CheckpointCorrupt`` naming ``where`` unless ``digest`` is the whole-file sha256 of ``entry``
    (a format-1 entry)."""
    if digest != entry.whole:
        raise CheckpointCorrupt(f"{where} has sha256 digest {digest}, its manifest says {entry.whole}")


def verify_bytes(data: bytes | bytearray | memoryview, entry: FileEntry, where: str) -> None:
    """Raise ``CheckpointCorrupt`` unless ``data`` has ``entry``'s size and digests."""
    function = hashes.function(entry.algorithm)
    if len(data) != entry.size:
        raise CheckpointCorrupt(f"{where} is {len(data)} bytes, its manifest says {entry.size}")
    if entry.chunk_size and (entry.chunks or entry.digest is not None):
        view, step = memoryview(data), entry.chunk_size
        pieces: list[Future[str | None]] = [
            _later(function, view[start : start + step]) for start in range(0, len(data), step)
        ]
        check_pieces(pieces, entry, where)
        return
    check_sha256(sha256_hex(data), entry, where)


def _mapping(fd: int, size: int) -> mmap.mmap | None:
    """A read-only shared mapping of the ``size`` bytes of ``fd`` (the inode it holds open), or None where the
    file is empty or cannot be mapped (the chunks are then read with ``pread``)."""
    if size == 0:
        return None
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return None


def _mapped_digest(function: Callable[[Blob], str], mapping: mmap.mmap, offset: int, length: int) -> str:
    """``function``'s digest of ``length`` bytes at ``offset`` of ``mapping``, hashed where they lie (the page
    cache), with no copy; every view taken here is released before returning, so the mapping can close."""
    with memoryview(mapping) as whole, whole[offset : offset + length] as piece:
        return function(piece)


def verify_fd(fd: int, entry: FileEntry, where: str) -> None:
    """Raise ``CheckpointCorrupt`` unless the file open as ``fd`` has ``entry``'s size and digests.

    Chunked entries are hashed on the hasher pool, one task per chunk, straight from a read-only mapping of
    ``fd`` (no copy out of the page cache; by measurement a third less time than reading each chunk into a
    buffer first: bench/results/checkpoint.json). A mapped file shrunk by someone else while it is hashed
    raises SIGBUS, as touching ``torch.load(mmap=True)``'s tensors of such a file would.
    """
    function = hashes.function(entry.algorithm)
    size = os.fstat(fd).st_size
    if size != entry.size:
        raise CheckpointCorrupt(f"{where} is {size} bytes, its manifest says {entry.size}")
    if entry.chunk_size and (entry.chunks or entry.digest is not None):
        step, mapping = entry.chunk_size, _mapping(fd, size)
        starts = range(0, size, step)
        pieces: list[Future[str | None]]
        if mapping is None:
            pieces = [_later(_chunk_digest, function, fd, start, min(step, size - start)) for start in starts]
            check_pieces(pieces, entry, where)
            return
        with mapping:  # check_pieces waits for every task, so no view of it is left when it closes
            pieces = [_later(_mapped_digest, function, mapping, start, min(step, size - start))
                      for start in starts]
            check_pieces(pieces, entry, where)
        return
    digest, count = sha256_fd(fd, size)
    if count != entry.size:
        raise CheckpointCorrupt(f"{where} is {count} bytes, its manifest says {entry.size}")
    check_sha256(digest, entry, where)


def entry_of_fd(fd: int, algorithm: str, *, meanwhile: Callable[[], None] | None = None) -> FileEntry:
    """The format-2 ``FileEntry`` of the file open as ``fd`` (a file another writer wrote, such as a DCP
    shard): every ``CHUNK`` hashed with ``algorithm`` on the hasher pool, straight from a read-only mapping
    where the file can be mapped (else read with ``pread``), its whole-file value derived from the chunks.
    ``meanwhile`` (such as the file's fsync, which waits on the disk) runs in this thread while the chunks are
    hashed; its exception is raised once every chunk's task has ended."""
    function = hashes.function(algorithm)
    size = os.fstat(fd).st_size
    starts = range(0, size, CHUNK)
    mapping = _mapping(fd, size)
    if mapping is None:
        found = [_later(_chunk_digest, function, fd, start, min(CHUNK, size - start)) for start in starts]
        _run_then_wait(meanwhile, found)
    else:
        with mapping:  # every task is waited for before the mapping closes
            found = [_later(_mapped_digest, function, mapping, start, min(CHUNK, size - start))
                     for start in starts]
            _run_then_wait(meanwhile, found)
    chunks = tuple(piece.result() for piece in found)
    if any(chunk is None for chunk in chunks):
        raise CheckpointCorrupt(f"file descriptor {fd} shrank while it was hashed (another writer?)")
    digests = tuple(str(chunk) for chunk in chunks)
    return FileEntry(size, hashes.combine(algorithm, digests), CHUNK, digests, digest=algorithm)


def _run_then_wait(meanwhile: Callable[[], None] | None, tasks: list[Future[Any]]) -> None:
    """Call ``meanwhile`` (if any), then wait for every task, even when ``meanwhile`` raised."""
    try:
        if meanwhile is not None:
            meanwhile()
    finally:
        wait(tasks)


class InOrderHasher:
    """The sha256 of a buffer that fills in ranges, in any order (a format-1 entry without chunks): each
    range is hashed on the hasher pool as soon as it and every range before it have arrived (at most one
    hashing task at a time, so the digest sees the bytes in order), overlapping the rest of the download."""

    def __init__(self, view: memoryview, ranges: list[tuple[int, int]]) -> None:
        self._view, self._ranges = view, ranges
        self._digest = hashlib.sha256()
        self._lock = threading.Lock()
        self._arrived: set[int] = set()
        self._next = 0
        self._draining = False
        self._tasks: list[Future[None]] = []

    def arrived(self, number: int) -> None:
        """Range ``number`` is complete in the buffer (call once per range, from any thread)."""
        with self._lock:
            self._arrived.add(number)
            if self._draining or self._next not in self._arrived:
                return
            self._draining = True
            self._tasks.append(_later(self._drain))

    def _drain(self) -> None:
        while True:
            with self._lock:  # the check and the hand-back are one step, so no arrival is missed
                if self._next not in self._arrived:
                    self._draining = False
                    return
                number = self._next
            start, stop = self._ranges[number]
            self._digest.update(self._view[start:stop])
            with self._lock:
                self._arrived.discard(number)
                self._next += 1

    def wait(self) -> None:
        """Wait until no hashing is under way (it reads the buffer); call once no range can arrive."""
        with self._lock:
            tasks = list(self._tasks)
        wait(tasks)

    def hexdigest(self) -> str | None:
        """The sha256 of the whole buffer, or None unless every range arrived (call after ``wait``)."""
        self.wait()
        return self._digest.hexdigest() if self._next == len(self._ranges) else None
