"""Payload (de)serialization: plain state -> one ``state.pt`` (torch zip) or ``state.json``, and back.

Invariant: loading never unpickles arbitrary objects. ``state.pt`` is read only with
``torch.load(weights_only=True)``; a file that needs anything outside that set raises ``UnsafeCheckpoint``
and nothing from it is used. A state that round-trips through JSON exactly (no tensors, no tuples, string
keys only) is stored as JSON, readable with any tool, and saving or loading it never imports torch.

Bytes reach ``deserialize`` only after their size and digests matched the manifest (reader.py). On local disk
a torch payload arrives as a ``VerifiedFile``: the descriptor the digests were computed through, which
``torch.load(mmap=True)`` maps (tensors are paged in from the verified file, not copied). grd never rewrites a
committed file in place (a retry renames a new directory in), so the mapping keeps showing the bytes that
were verified, even after the checkpoint is replaced or deleted.

Saving copies torch.save's output once, into ``Pieces`` of ``PIECE_BYTES`` (smaller for a local save of a
small state: ``piece_size_for``), which the hasher and the store use as they are; each piece is one of the
manifest's chunks, whose size the manifest records. ``serialize(..., stream=True)`` gives a ``PieceStream``
instead: torch.save runs on a thread of its own and each piece is hashed and written (or sent) as soon as it
is complete, while the rest is still being serialized. A stream's readers get its pieces in order, and the
producer's own error (never a partial payload) once they reach the point where it failed. A stream holds at
most ``window`` pieces at a time (``STREAM_WINDOW`` for a local save: 32 MiB at most, a 16th of the state
from 64 MiB up): each buffer goes back to a process-wide pool as soon as the digest and the store have
released it, and torch.save waits for one beyond that, so a save's memory does not grow with the state.

grd's torch.save writes its zip records without zip CRC32s (``_torch_save``): the manifest's digests cover
every byte and are checked before ``torch.load`` sees one, and the CRC pass cost as much CPU as the rest of
serializing (about 1.5 GB/s). ``torch.load`` reads such a file as any other; a zip tool's own check of it
reports CRC mismatches. Only grd's own serializing threads write without CRCs: torch's setting, and any other
thread's torch.save, are left as they are.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import mmap
import os
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, cast

from grd_blocks.errors import CheckpointCorrupt, UnsafeCheckpoint, UsageError

TORCH_FILE = "state.pt"
JSON_FILE = "state.json"
MAX_JSON_BYTES = 64 * 1024 * 1024
"""The largest JSON payload written or read (decoding one costs several times its size in memory): a larger
plain state is saved with torch.save, and a manifest claiming a larger JSON payload is a damaged checkpoint,
refused before a byte of it is read."""

PIECE_BYTES = 8 * 2**20
"""Size of the pieces a torch payload is serialized into (digest.CHUNK and s3parts.PART_BYTES are equal); a
local save of a smaller state uses smaller ones (``piece_size_for``)."""

MIN_PIECE_BYTES = 2**20
"""The smallest piece ``piece_size_for`` chooses (a multiple of any ``O_DIRECT`` alignment)."""

TEXT_PIECE_BYTES = 2**17
"""The piece size of a JSON payload a local save streams (a run's progress snapshots: JSON of up to a few MB,
saved again and again while the run goes on): such a save never holds a buffer larger than this, nor more
than ``STREAM_WINDOW`` of them (pooled: half a MiB). With 1 MiB pieces, or the whole text encoded at once
below that, each snapshot freed a block larger than glibc's mmap threshold, which raises the threshold, and
the flow process's heaps then grew with the run's length."""


def piece_size_for(state_bytes: int) -> int:
    """The piece size for a local save of a state holding ``state_bytes`` bytes of tensors: the largest power
    of two at most a 64th of it, between ``MIN_PIECE_BYTES`` and ``PIECE_BYTES``. A stream holds
    ``STREAM_WINDOW`` pieces, so its memory stays within a 16th of the state from 64 MiB up (8 MiB pieces,
    32 MiB in all, from 512 MiB up)."""
    size = MIN_PIECE_BYTES
    while size < PIECE_BYTES and size * 2 * 64 <= state_bytes:
        size *= 2
    return size


@dataclass(frozen=True)
class Pieces:
    """Serialized content as consecutive ``bytes`` pieces of ``piece_size`` bytes (the last may be shorter).

    torch.save's output is copied once, straight into these pieces: each piece is then one manifest chunk to
    hash and one multipart-upload part to send as it is, with no further copy.
    """

    pieces: tuple[bytes | PieceBuffer, ...]
    piece_size: int

    def __len__(self) -> int:
        return sum(len(piece) for piece in self.pieces)

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)


PieceBuffer = bytearray | mmap.mmap
"""A full piece's buffer: a ``bytearray``, or page-aligned anonymous memory (``mmap``) that a local save can
hand to the disk with ``O_DIRECT`` as it is (storage/commit.py)."""


class _PiecePool:
    """Full-size piece buffers reused from one streamed save to the next, process-wide (at most
    ``POOL_PIECES`` kept between saves).

    Why: a fresh 8 MiB buffer per piece costs the kernel a zero-fill and a page fault per 4 KiB page on first
    write (for a large payload about as much CPU as serializing it); a reused one costs only the copy. A
    stream takes at most its ``window`` of buffers at a time and hands each back as soon as every reader is
    done with it, so a save of any size cycles through the same few buffers. ``aligned`` pools hand out
    page-aligned buffers (``mmap``), the others ``bytearray``s.
    """

    def __init__(self, *, aligned: bool, size: int = PIECE_BYTES) -> None:
        self._lock = threading.Lock()
        self._free: list[PieceBuffer] = []
        self._aligned = aligned
        self.size = size

    def take(self) -> PieceBuffer:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, self.size) if self._aligned else bytearray(self.size)

    def give(self, piece: PieceBuffer) -> None:
        with self._lock:
            if len(self._free) < POOL_PIECES:
                self._free.append(piece)


POOL_PIECES = 16
"""Most free piece buffers the process keeps between streamed saves, per pool (128 MiB at most, usually a
window's)."""

_POOLS: dict[tuple[bool, int], _PiecePool] = {}
_POOLS_LOCK = threading.Lock()


def _pool(aligned: bool, size: int = PIECE_BYTES) -> _PiecePool:
    """The process-wide pool of ``size``-byte buffers, page-aligned or not."""
    with _POOLS_LOCK:
        pool = _POOLS.get((aligned, size))
        if pool is None:
            pool = _POOLS[(aligned, size)] = _PiecePool(aligned=aligned, size=size)
        return pool

STREAM_WINDOW = 4
"""Pieces a local save's stream holds at once (taken and not yet written and hashed): 32 MiB, whatever the
size of the state; torch.save waits for a buffer beyond that."""


class PieceStream:
    """A torch payload still being serialized: a producer thread runs torch.save into ``piece_size`` pieces
    (``PIECE_BYTES`` unless told) and readers take each piece, in order, as soon as it is complete. A
    ``JsonText`` payload is written as it is (its pieces joined into the stream's).

    ``piece(n)`` waits for piece ``n`` (None once the payload turned out to have fewer); ``complete()`` waits
    for all of it. Either raises the producer's error if serializing failed before that piece. ``stop()``
    makes the producer give up at its next piece and waits for it to end (what a failed commit calls).

    Bounded memory: with ``readers`` set, each of that many readers calls ``release(n)`` once it is done with
    piece ``n``; once all have, the piece's buffer goes back to the pool and the piece can no longer be read.
    The producer then holds at most ``window`` pieces at a time (it waits for a release before taking another
    buffer), so a save's extra memory is ``window * piece_size`` plus the last, shorter piece, not a copy of
    the payload. Without ``readers`` (``None``) pieces are kept until the stream is dropped and ``window`` is
    not enforced. With ``aligned`` every full piece is page-aligned memory (``mmap``), which a local save
    writes to the disk with ``O_DIRECT`` as it is; otherwise a ``bytearray``.
    """

    def __init__(
        self,
        payload: Any,
        *,
        readers: int | None = None,
        window: int | None = STREAM_WINDOW,
        aligned: bool = False,
        piece_size: int = PIECE_BYTES,
    ) -> None:
        if (readers is not None and readers < 1) or (window is not None and window < 2):
            raise ValueError(f"a stream needs readers >= 1 and a window >= 2, not {readers}, {window}")
        self.piece_size = piece_size
        self._changed = threading.Condition()
        self._pieces: list[bytes | PieceBuffer | None] = []
        self._pool = _pool(aligned, piece_size)
        self._releases: list[int] = []  # per piece: how many readers are done with it
        self._readers = readers
        self._window = window
        self._held = 0  # buffers taken and not yet released by every reader
        self._size = 0
        self._done = False
        self._stopped = False  # the reader gave up ...
        self._refused = False  # ... and the producer was told so (torch.save may re-wrap the error)
        self._error: BaseException | None = None
        self._reader_error: BaseException | None = None  # a reader failed (``fail``): every reader stops
        self._thread: threading.Thread | None = None
        if payload is not _FED:
            self._thread = threading.Thread(
                target=self._produce, args=(payload,), name="grd-serialize", daemon=True
            )
            self._thread.start()

    @classmethod
    def fed(cls, *, readers: int, window: int, aligned: bool = False) -> PieceFeed:
        """A stream whose bytes are written by the caller, not by torch.save on a thread of its own: the
        returned ``PieceFeed`` is a file to write them into (its ``stream`` is what the readers read). The
        writer is held to the ``window`` as torch.save is."""
        return PieceFeed(cls(_FED, readers=readers, window=window, aligned=aligned))

    def _produce(self, payload: Any) -> None:
        error: BaseException | None = None
        writer = self._writer()
        try:
            if isinstance(payload, JsonText):
                payload.write_to(writer)
            else:
                _torch_save(payload, writer)
            writer.close()
        except BaseException as exc:  # handed to the readers, raised where they wait
            error = writer.failure or exc
        writer.drop()
        self._finish(error)

    def _writer(self) -> _PieceWriter:
        return _PieceWriter(self._add, self._take, self._pool)

    def _finish(self, error: BaseException | None) -> None:
        with self._changed:
            self._done, self._error = True, error
            self._changed.notify_all()

    def _refuse_if_stopped(self) -> None:
        if self._stopped:
            self._refused = True
            raise _Stopped("the commit this payload was serialized for has failed")

    def _take(self) -> PieceBuffer:
        """A buffer for the next full piece, once fewer than ``window`` are held (bounded streams)."""
        with self._changed:
            window = self._window
            if self._readers is not None and window is not None:
                self._changed.wait_for(lambda: self._held < window or self._stopped)
            self._refuse_if_stopped()
            self._held += 1
        return self._pool.take()

    def _add(self, piece: bytes | PieceBuffer) -> None:
        with self._changed:
            self._refuse_if_stopped()
            self._pieces.append(piece)
            self._releases.append(0)
            self._size += len(piece)
            self._changed.notify_all()

    def piece(self, number: int) -> bytes | PieceBuffer | None:
        """Piece ``number`` once it is complete; None if the payload has no such piece."""
        with self._changed:
            self._changed.wait_for(
                lambda: number < len(self._pieces) or self._done or self._reader_error is not None
            )
            if self._reader_error is not None:
                raise self._reader_error
            if number < len(self._pieces):
                piece = self._pieces[number]
                if piece is None:
                    raise RuntimeError(f"piece {number} was read after its readers released it")
                return piece
            if self._error is not None:
                raise self._error
            return None

    def release(self, number: int) -> None:
        """One reader is done with piece ``number``; after the last, its buffer serves the next piece."""
        with self._changed:
            if self._readers is None:
                return
            self._releases[number] += 1
            piece = self._pieces[number]
            if self._releases[number] < self._readers or piece is None:
                return
            self._pieces[number] = None
            if not isinstance(piece, bytes):  # a full piece: its buffer came from the pool
                self._held -= 1
                self._pool.give(piece)
            self._changed.notify_all()

    def __iter__(self) -> Iterator[bytes | PieceBuffer]:
        number = 0
        while (piece := self.piece(number)) is not None:
            yield piece
            number += 1

    def size(self) -> int:
        """The payload's length in bytes, once serialized (raises the producer's error if it failed)."""
        with self._changed:
            self._changed.wait_for(lambda: self._done)
            if self._error is not None:
                raise self._error
            return self._size

    def complete(self) -> bytes | Pieces:
        """The whole payload, once serialized (what ``serialize`` without a stream would have given); only
        for a stream whose pieces were not released."""
        self.size()
        with self._changed:
            pieces = tuple(self._pieces)
        kept = tuple(piece for piece in pieces if piece is not None)
        if len(kept) != len(pieces):
            raise RuntimeError("this stream's pieces were released: it can only be read piece by piece")
        return bytes(kept[0]) if len(kept) == 1 else Pieces(kept, self.piece_size)

    def __len__(self) -> int:
        return self.size()

    def __bytes__(self) -> bytes:
        return bytes(self.complete())

    def fail(self, error: BaseException) -> None:
        """A reader cannot go on (its own ``error``): the producer gives up and every reader gets ``error``
        (no reader waits for a release that will not come)."""
        with self._changed:
            self._stopped = True
            self._reader_error = self._reader_error or error
            self._changed.notify_all()

    def stop(self) -> BaseException | None:
        """Stop the producer and wait for it; its own error if serializing failed (not by this stop or by a
        reader's ``fail``: that reader raised its own error already)."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        if self._thread is not None:  # a fed stream's writer is the caller's: it raises at its next write
            self._thread.join()
        return None if self._refused else self._error


_FED: Any = object()
"""``PieceStream``'s payload when the caller writes the bytes (``PieceStream.fed``)."""


class PieceFeed:
    """The writing end of a fed ``PieceStream``: a write-only file (``write``, ``tell``, ``flush``) whose
    bytes become the stream's pieces as they are written, on the writer's own thread (so a library that writes
    into a file it opened, such as torch.distributed.checkpoint, feeds readers that send and hash each piece
    while the rest is being written). ``close`` ends the stream; ``abandon(error)`` ends it with ``error``,
    which its readers then raise. A write after a reader failed raises (the stream's readers gave up)."""

    def __init__(self, stream: PieceStream) -> None:
        self.stream = stream
        self._writer = stream._writer()
        self._offset = 0
        self._ended = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = self._writer.write(data)
        self._offset += written
        return written

    def tell(self) -> int:
        return self._offset

    def flush(self) -> None:
        """Nothing is buffered outside the pieces."""

    def close(self) -> None:
        """The last, shorter piece goes out and the stream ends (its readers see no more pieces)."""
        if self._ended:
            return
        error: BaseException | None = None
        try:
            self._writer.close()
        except BaseException as exc:  # a reader gave up: the stream ends with what stopped it
            error = self._writer.failure or exc
        self._end(error)
        if error is not None:
            raise error

    def abandon(self, error: BaseException) -> None:
        """End the stream with ``error`` (the writing failed): its readers raise it, none sees a partial
        payload as whole."""
        if not self._ended:
            self._end(error)

    def _end(self, error: BaseException | None) -> None:
        self._ended = True
        self._writer.drop()
        self.stream._finish(error)


class _Stopped(Exception):
    """Raised inside torch.save once the stream's reader gave up."""


Payload = bytes | Pieces | PieceStream
"""What ``serialize`` produces and the commit protocols write."""

Blob = bytes | bytearray | memoryview | mmap.mmap
"""File content read back (a download arrives as the ``bytearray`` it was received into), or a piece of it."""


def pieces_of(data: Payload | Blob) -> tuple[Blob, ...]:
    """``data`` as consecutive pieces (one, unless it is ``Pieces``); a stream once it is complete."""
    if isinstance(data, PieceStream):
        data = data.complete()
    return data.pieces if isinstance(data, Pieces) else (data,)


class _PieceWriter:
    """The file ``torch.save`` writes into: every byte is copied once, into the pool's buffers from
    ``new_piece`` (small writes gather in the current buffer; a large write, such as a tensor's storage, fills
    it and then whole pieces straight from the tensor's memory). Each full piece is handed to ``emit`` in
    order; ``close`` emits the last, shorter piece (as ``bytes``, its buffer back to the pool)."""

    def __init__(
        self,
        emit: Callable[[bytes | PieceBuffer], None],
        new_piece: Callable[[], PieceBuffer] | None = None,
        pool: _PiecePool | None = None,
    ) -> None:
        self._emit = emit
        self._pool = pool or _pool(False)
        self._size = self._pool.size  # the pieces are the pool's buffers
        self._new_piece = new_piece or (lambda: bytearray(self._size))
        self._current: PieceBuffer | None = None
        self._filled = 0
        self.failure: BaseException | None = None  # what failed in ``write``: torch.save's cleanup may
        # raise an error of its own over it

    def write(self, data: Any) -> int:
        try:
            return self._write(data)
        except BaseException as exc:
            self.failure = self.failure or exc
            raise

    def _write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            if self._current is None:
                self._current, self._filled = self._new_piece(), 0
            take = min(len(view), self._size - self._filled)
            self._current[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == self._size:
                piece, self._current = self._current, None
                self._emit(piece)
        return size

    def flush(self) -> None:
        """Nothing is buffered outside the pieces."""

    def close(self) -> None:
        if self._current is not None and self._filled:
            last = bytes(memoryview(self._current)[: self._filled])
            self.drop()
            self._emit(last)

    def drop(self) -> None:
        """Give the current, unfinished piece's buffer back (after ``close``, or when torch.save failed)."""
        if self._current is not None:
            self._pool.give(self._current)
            self._current = None


@dataclass(frozen=True)
class VerifiedFile:
    """A local payload file whose size and digests were verified through the open descriptor ``fd``."""

    fd: int
    path: str  # the committed path, for messages

    @property
    def open_path(self) -> str:
        """A path to the same inode as ``fd`` (``/proc/self/fd/N`` on Linux), immune to later renames."""
        proc = f"/proc/self/fd/{self.fd}"
        return proc if os.path.exists(proc) else self.path

    def read(self) -> bytes:
        """The whole file, read through ``fd``."""
        size = os.fstat(self.fd).st_size
        parts, offset = [], 0
        while offset < size:
            part = os.pread(self.fd, size - offset, offset)
            if not part:
                break
            parts.append(part)
            offset += len(part)
        return b"".join(parts)


class _BlobReader(io.RawIOBase):
    """A read-only, seekable file over a ``Blob`` that copies nothing until asked to (``io.BytesIO`` copies a
    ``bytearray`` or ``memoryview`` up front): ``torch.load`` reads each record straight into its tensor."""

    def __init__(self, data: Blob) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        count = max(0, min(len(target), len(self._view) - self._pos))
        target[:count] = self._view[self._pos : self._pos + count]
        self._pos += count
        return count


def json_text(value: Any) -> str | None:
    """``value`` as JSON text (keys sorted) if JSON holds it exactly, else None.

    Exactly: reading the text back gives a value equal to ``value`` (string keys, lists rather than tuples,
    finite floats). Encoding, decoding and comparing all run in C, several times faster than walking the
    value in Python, which matters for large plain states such as a benchmark's progress rows."""
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
        return text if json.loads(text) == value else None
    except (TypeError, ValueError, RecursionError):
        return None


class JsonText:
    """A plain value already encoded as JSON text, spliced into a JSON payload as it is.

    Made only by ``JsonText(value)`` (checked like any plain state: the text reads back equal to ``value``),
    ``JsonText.joined`` (an object whose members are such texts, joined: valid by construction) or a
    subclass that writes the bytes such a text encoded, kept elsewhere (``row_texts.StoredText``: a row kept
    compressed), so a payload holding them is exactly what encoding the values whole would give. It lets a
    caller that saves one large value again and again with a few new members (a run's progress rows) encode
    each member once, instead of encoding, decoding and comparing the whole value at every save. The text
    is kept as ASCII bytes (json's default escapes the rest), and a joined text refers to its members, not
    to copies of them: a save writes the payload's bytes from them, piece by piece."""

    __slots__ = ("_members", "_pieces", "size")
    _pieces: tuple[bytes | JsonText, ...]
    _members: tuple[list[str] | None, Mapping[str, JsonText]] | None  # a large object: written when asked
    size: int

    def __init__(self, value: Any) -> None:
        text = json_text(value)
        if text is None:
            raise UsageError(f"{type(value).__name__} value is not JSON data (string keys, lists, finite "
                             "numbers): pass plain data")
        self._pieces, self._members = (text.encode("ascii"),), None
        self.size = len(text)

    @classmethod
    def joined(cls, members: Mapping[str, JsonText], *, sort: bool = True) -> JsonText:
        """The JSON object of ``members`` (keys sorted, like ``json_text``, unless ``sort`` is False: then in
        the mapping's order). It refers to the members, not to copies: a small object lists their texts as
        its pieces; a large one (a run's progress rows) keeps ``members`` itself, which the caller then leaves
        unchanged, and writes each key when asked, so the object costs no memory per member beyond the
        caller's mapping (nor that, for a mapping that makes its members as its ``items()`` are read)."""
        joined = cls.__new__(cls)
        keys = sorted(members) if sort else None
        if len(members) > _LISTED_MEMBERS:
            joined._pieces, joined._members = (), (keys, members)
            items: Iterable[tuple[str, JsonText]] = joined._member_items()
        else:
            items = list(members.items()) if keys is None else [(key, members[key]) for key in keys]
            pieces: list[bytes | JsonText] = [b"{"]
            for index, (key, text) in enumerate(items):
                pieces += (_key_piece(key, index > 0), text)
            pieces.append(b"}")
            joined._pieces, joined._members = tuple(pieces), None
        joined.size = 2 + sum(len(_key_piece(key, index > 0)) + text.size
                              for index, (key, text) in enumerate(items))
        return joined

    def encoded(self) -> bytes:
        """The JSON text as bytes: a joined text's are written into one growing buffer (``bytes.join`` of
        many pieces allocates a buffer descriptor per piece, ~80 bytes each: as much again as the rows)."""
        if self._members is None and len(self._pieces) == 1 and isinstance(self._pieces[0], bytes):
            return self._pieces[0]
        out = io.BytesIO()
        self.write_to(out)
        return out.getvalue()

    def _member_items(self) -> Iterator[tuple[str, JsonText]]:
        assert self._members is not None
        keys, members = self._members
        return iter(members.items()) if keys is None else ((key, members[key]) for key in keys)

    def write_to(self, out: IO[bytes] | _PieceWriter) -> None:
        """Write the JSON text into ``out`` as it is made up (no copy of it in memory)."""
        if self._members is not None:
            out.write(b"{")
            for index, (key, text) in enumerate(self._member_items()):
                out.write(_key_piece(key, index > 0))
                text.write_to(out)
            out.write(b"}")
            return
        for piece in self._pieces:
            if isinstance(piece, JsonText):
                piece.write_to(out)
            else:
                out.write(piece)

    def value(self) -> Any:
        """The value the text encodes."""
        return json.loads(self.encoded())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonText) and other.encoded() == self.encoded()

    def __hash__(self) -> int:
        return hash(self.encoded())


_LISTED_MEMBERS = 16
"""A joined object of more members keeps their mapping rather than a list of its pieces."""


@functools.lru_cache(maxsize=256)
def _key_piece(key: str, after_another: bool) -> bytes:
    """``"key": `` (after ``, `` unless first) as ASCII bytes; the few keys joined again and again (those of
    every progress row's entry) share one object each."""
    return f"{', ' if after_another else ''}{json.dumps(key)}: ".encode("ascii")


def _payload_json(payload: Mapping[str, Any]) -> JsonText | None:
    """The JSON text of ``payload`` (its ``JsonText`` members spliced in as they are), or None if it is not
    JSON data."""
    members: dict[str, JsonText] = {}
    for key, value in payload.items():
        if isinstance(value, JsonText):
            members[key] = value
        else:
            try:
                members[key] = JsonText(value)
            except UsageError:
                return None
    return JsonText.joined(members)


def _decoded(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with each ``JsonText`` member replaced by its value (a payload that goes the torch way)."""
    return {key: value.value() if isinstance(value, JsonText) else value for key, value in payload.items()}


def serialize(
    payload: dict[str, Any],
    *,
    stream: bool = False,
    window: int | None = STREAM_WINDOW,
    aligned: bool = False,
    piece_size: int = PIECE_BYTES,
    text_piece_size: int | None = None,
) -> tuple[dict[str, Payload], str]:
    """Return ``({file name: content}, payload_format)`` for the plain ``payload``; with ``stream`` a torch
    payload is a ``PieceStream`` still being produced, holding at most ``window`` pieces of ``piece_size``
    (page-aligned ones with ``aligned``), read by two readers (the digest and the store: each must
    ``release`` every piece; the caller must ``stop()`` it if it gives up); so is a payload of JSON texts
    larger than one piece of ``text_piece_size`` (default ``piece_size``)."""
    if not any(isinstance(value, JsonText) for value in payload.values()):
        text = json_text(payload)
        if text is not None and len(text) <= MAX_JSON_BYTES:  # a larger plain state goes the torch way
            return {JSON_FILE: text.encode()}, "json"
    else:
        spliced = _payload_json(payload)
        if spliced is not None and spliced.size <= MAX_JSON_BYTES:
            text_piece_size = piece_size if text_piece_size is None else text_piece_size
            if stream and spliced.size > text_piece_size:
                # a large plain state of texts (a run's progress rows) goes to the store as its texts are
                # joined, a window of pieces at a time: never a copy of the whole payload in memory
                joined = PieceStream(spliced, readers=2, window=window, aligned=aligned,
                                     piece_size=text_piece_size)
                return {JSON_FILE: joined}, "json"
            return {JSON_FILE: spliced.encoded()}, "json"
    payload = _decoded(payload)
    if stream:
        stream_of = PieceStream(payload, readers=2, window=window, aligned=aligned, piece_size=piece_size)
        return {TORCH_FILE: stream_of}, "torch"
    pieces: list[bytes | PieceBuffer] = []
    writer = _PieceWriter(pieces.append)
    _torch_save(payload, writer)  # a state not JSON holds tensors (torch is loaded) or tuples/int keys
    writer.close()
    return {TORCH_FILE: bytes(pieces[0]) if len(pieces) == 1 else Pieces(tuple(pieces), PIECE_BYTES)}, "torch"


_WITHOUT_ZIP_CRC = threading.local()
_CRC_SWITCH_LOCK = threading.Lock()


def _torch_save(payload: Any, writer: _PieceWriter) -> None:
    """torch.save ``payload`` into ``writer``, its zip records without CRC32s (the module docstring: why)."""
    import torch

    with without_zip_crc():
        torch.save(payload, cast(IO[bytes], writer))


@contextlib.contextmanager
def without_zip_crc() -> Iterator[None]:
    """While inside, torch.save calls made by this thread write zip records without CRC32s; torch's own
    setting and other threads' saves are left as they are. For bytes whose every chunk a manifest covers.

    torch reads its CRC setting through ``torch.serialization.get_crc32_options()`` when a save opens its zip
    writer; that function is wrapped, once per process, to answer False on a thread inside this block and
    torch's own setting everywhere else."""
    import torch.serialization

    with _CRC_SWITCH_LOCK:
        current = torch.serialization.get_crc32_options
        if not getattr(current, "grd_thread_switch", False):
            torch.serialization.get_crc32_options = _crc32_switch(current)
    outer = getattr(_WITHOUT_ZIP_CRC, "active", False)
    _WITHOUT_ZIP_CRC.active = True
    try:
        yield
    finally:
        _WITHOUT_ZIP_CRC.active = outer


def _crc32_switch(torch_setting: Callable[[], bool]) -> Callable[[], bool]:
    def get_crc32_options() -> bool:
        return False if getattr(_WITHOUT_ZIP_CRC, "active", False) else torch_setting()

    get_crc32_options.grd_thread_switch = True  # type: ignore[attr-defined]
    get_crc32_options.__doc__ = torch_setting.__doc__
    return get_crc32_options


def _torch_load(source: Blob | VerifiedFile, map_location: Any) -> Any:
    import torch

    if not isinstance(source, VerifiedFile):
        reader = cast(IO[bytes], _BlobReader(source))
        return torch.load(reader, map_location=map_location, weights_only=True)
    try:
        return torch.load(source.open_path, map_location=map_location, weights_only=True, mmap=True)
    except OSError:  # a filesystem that cannot be memory-mapped: read the same descriptor instead
        return torch.load(io.BytesIO(source.read()), map_location=map_location, weights_only=True)


def deserialize(
    files: Mapping[str, Blob | VerifiedFile], payload_format: str, *, where: str, map_location: Any = "cpu"
) -> Any:
    """Read back what ``serialize`` wrote; ``where`` (the checkpoint URL) names it in errors."""
    if payload_format == "json":
        try:
            data = files[JSON_FILE]
            return json.loads(bytes(data.read() if isinstance(data, VerifiedFile) else data))
        except (KeyError, ValueError) as exc:
            raise CheckpointCorrupt(f"{where}: {JSON_FILE} is missing or not JSON ({exc})") from None
        except RecursionError:  # '[[[[...' under a forged manifest: deeper than any state grd wrote
            raise CheckpointCorrupt(f"{where}: {JSON_FILE} nests JSON deeper than it can be read") from None
    if payload_format != "torch":
        raise CheckpointCorrupt(f"{where}: payload_format {payload_format!r} is not 'torch' or 'json'")
    if TORCH_FILE not in files:
        raise CheckpointCorrupt(f"{where}: manifest says torch payload but {TORCH_FILE} is not listed")
    try:
        return _torch_load(files[TORCH_FILE], map_location)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpoint(
            f"{where}/{TORCH_FILE} refers to objects outside torch's weights-only set ({first_line}); "
            "grd never unpickles arbitrary objects. Save state_dicts, tensors and plain values instead"
        ) from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointCorrupt(f"{where}/{TORCH_FILE} cannot be read by torch.load ({exc})") from None
