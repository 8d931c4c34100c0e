"""Moving one large payload to and from S3 in parallel parts: multipart upload and ranged GETs.

s3fs moves a large object one way or another (``pipe_file`` in batches of parts that wait for the slowest,
``cat_file`` through three whole-object copies), and hashes every part twice (payload signature, CRC32) on its
one event-loop thread. This module moves the parts from ``s3client.TRANSFER_THREADS`` threads through a
botocore client built from the filesystem's own settings (s3client.py: same credentials, endpoint, retries and
error translation), with fewer copies, no batch barriers, and two hash passes where there were four: the
manifest's chunk digests (one per part) and each part's CRC32.

Invariants:

* Only a real ``s3fs.S3FileSystem`` (``is_s3``) whose client s3client.py can rebuild takes these paths;
  anything else, including wrappers that record or fault calls, goes through ``pipe_file``/``cat_file``
  unchanged.
* ``put_object``: payloads of at least two ``PART_BYTES`` parts go up as a multipart upload with
  ``s3client.TRANSFER_THREADS`` parts in flight (a finished part starts the next one at once). The object
  appears only when ``complete_multipart_upload`` succeeds; any failure stops the parts not yet started, waits
  for those under way, aborts the upload (best effort) and raises the first failure (by part number), so a
  reader never sees a partial object. ``Pieces`` of ``PART_BYTES`` (what serialize produces) are sent as they
  are, a ``PieceStream``'s pieces as soon as each is produced (a failed serialization stops the upload like a
  failed part, and its own error is raised); other content is copied one part at a time, just before that part
  is sent.
* Each part carries a CRC32 the server checks (s3client.py: a damaged part is refused and sent again) and
  no sha256 of its own: each part is one manifest chunk, whose digest (``digest.digest_later``, hashed once
  as the piece is produced), checked on every load before anything is used, proves the bytes end to end.
* ``get_verified`` never reads more than the manifest's size plus one byte, and allocates a buffer of the
  manifest's size only once the object's own size (a HEAD) equals it: a forged manifest or an oversized object
  costs no memory. A small object is one ranged GET; a large one is read by ranged GETs,
  ``s3client.TRANSFER_THREADS`` in flight, straight into one buffer of the manifest's size (``readinto``, no
  intermediate copies), and hashed while it arrives: an entry with ``PART_BYTES`` chunk digests (what grd
  writes) chunk by chunk, each as soon as it is in; a format-1 entry without chunk digests as the whole-file
  sha256, each range as soon as every range before it is in (``digest.InOrderHasher``); other chunk sizes
  once every byte is in. The buffer is returned only after the object's size (every response's
  ``Content-Range`` total) and every digest matched the manifest entry; otherwise ``CheckpointCorrupt`` names
  ``where``.
  Nothing that failed or did not verify is ever returned, and no hashing still reads the buffer when
  ``get_verified`` returns or raises.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import TYPE_CHECKING, Any, Protocol, cast

import fsspec
from fsspec.asyn import AsyncFileSystem

from grd_blocks.checkpoint.payload.digest import (
    InOrderHasher,
    check_pieces,
    check_sha256,
    hash_later,
    verify_bytes,
)
from grd_blocks.checkpoint.payload.hashes import function as hash_function
from grd_blocks.checkpoint.payload.manifest import FileEntry
from grd_blocks.checkpoint.payload.serialization import (
    PIECE_BYTES,
    STREAM_WINDOW,
    Blob,
    Payload,
    PieceBuffer,
    Pieces,
    PieceStream,
)
from grd_blocks.errors import CheckpointCorrupt

if TYPE_CHECKING:
    from grd_blocks.checkpoint.storage.s3client import S3Client

PART_BYTES = PIECE_BYTES
"""Part size of multipart uploads and ranged GETs: 8 MiB, the size of serialize's pieces and of the manifest's
chunks (boto3's default part size too)."""


def is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is an s3fs filesystem itself (not a wrapper around one)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return isinstance(fs, AsyncFileSystem) and "s3" in protocols and hasattr(fs, "_call_s3")


def _s3(fs: fsspec.AbstractFileSystem) -> Any:
    """``fs`` as what it is once ``is_s3`` said so: an s3fs filesystem (s3fs ships no type hints)."""
    return fs


def parallel(fs: fsspec.AbstractFileSystem, size: int) -> bool:
    """Whether an object of ``size`` bytes on ``fs`` moves in parallel parts (S3, two parts or more)."""
    return size >= 2 * PART_BYTES and usable(fs)


def usable(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is S3 reached through a botocore client s3client.py can rebuild."""
    if not is_s3(fs):
        return False
    from grd_blocks.checkpoint.storage import s3client  # botocore is imported only once S3 is in use

    return s3client.supported(fs)


def _client(fs: fsspec.AbstractFileSystem) -> S3Client:
    from grd_blocks.checkpoint.storage import s3client

    return s3client.client_for(fs)


def _in_parallel(numbers: Iterable[int], job: Callable[[int], None]) -> None:
    """Run ``job(n)`` for each ``n`` of ``numbers`` on the transfer threads, in order,
    ``s3client.TRANSFER_THREADS`` at a time, each submitted as soon as ``numbers`` yields it (a stream's next
    piece may still be coming).

    The first failure stops the jobs not yet started; the failure of the lowest-numbered job is raised once
    every job under way has returned (so nothing still writes into, or reads from, the caller's buffers). An
    error raised by ``numbers`` itself (a failed serialization) stops them alike and is raised as it is.
    """
    from grd_blocks.checkpoint.storage.s3client import transfer_pool

    stop = threading.Event()

    def run(number: int) -> None:
        if stop.is_set():
            return
        try:
            job(number)
        except BaseException:
            stop.set()
            raise

    pool = transfer_pool()
    futures: list[Future[None]] = []
    try:
        for number in numbers:
            if stop.is_set():
                break
            futures.append(pool.submit(run, number))
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:  # also when interrupted while waiting: nothing may outlive this call
        if not all(future.done() for future in futures):
            stop.set()
            for future in futures:
                future.cancel()
            wait(futures)
    for future in futures:
        error = None if future.cancelled() else future.exception()
        if error is not None:
            raise error


def _ranges(size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each part of an object of ``size`` bytes."""
    return [(start, min(start + PART_BYTES, size)) for start in range(0, size, PART_BYTES)]


# ------------------------------------------------------------------ upload


def takes_streams(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``put_object`` on ``fs`` sends a ``PieceStream``'s pieces while the rest is serialized."""
    return parallel(fs, 2 * PART_BYTES)


def stream_window(fs: fsspec.AbstractFileSystem) -> int:
    """Pieces a stream sent to ``fs`` in parts may hold at once: one per transfer thread and as many ready
    next (a failed part ``fail``s the stream, so no producer waits for pieces that will never be sent)."""
    if not is_s3(fs):
        return STREAM_WINDOW  # no stream goes there (``takes_streams``); botocore stays unimported
    from grd_blocks.checkpoint.storage.s3client import TRANSFER_THREADS

    return 2 * TRANSFER_THREADS


def put_object(fs: fsspec.AbstractFileSystem, path: str, data: Payload) -> None:
    """Write ``data`` as the object ``path``: in parallel parts when ``parallel``, else one ``pipe_file``.
    A ``PieceStream`` of two pieces or more goes up in parts, each sent as soon as it is produced."""
    streamed = isinstance(data, PieceStream) and data.piece(1) is not None
    if not parallel(fs, 2 * PART_BYTES if streamed else len(data)):
        fs.pipe_file(path, bytes(data))
        return
    bucket, key, _ = _s3(fs).split_path(path)
    _put_parts(_client(fs), bucket, key, data)
    fs.invalidate_cache(path)


def drop_folder(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Forget the emptied "folder" ``path/``: SeaweedFS keeps listing a prefix whose objects were all deleted
    until its ``path/`` key is deleted too (each deleted checkpoint then cost every later listing a manifest
    GET); AWS S3 has no folders and answers the DELETE as a no-op. Best effort: failures are ignored."""
    if not usable(fs):
        return
    bucket, key, _ = _s3(fs).split_path(path)
    with contextlib.suppress(Exception):  # nothing depends on it: the objects are already gone
        _client(fs).call("delete_object", Bucket=bucket, Key=key.rstrip("/") + "/")
    fs.invalidate_cache(path)


def _part_source(data: Payload) -> tuple[Iterable[int], Callable[[int], bytes | PieceBuffer]]:
    """``(part numbers, part number -> its bytes)``: ``Pieces`` of ``PART_BYTES`` are sent as they are, a
    stream's pieces as each is produced (its numbers end with its last piece; ``_put_parts`` releases each
    once sent); anything else is cut into ``PART_BYTES`` parts, each copied once when it is about to be
    sent."""
    if isinstance(data, PieceStream):
        stream = data
        numbers = itertools.takewhile(lambda number: stream.piece(number) is not None, itertools.count())
        return numbers, lambda number: cast(bytes | PieceBuffer, stream.piece(number))
    if isinstance(data, Pieces) and data.piece_size == PART_BYTES:
        return range(len(data.pieces)), data.pieces.__getitem__
    view = memoryview(bytes(data) if isinstance(data, Pieces) else data)
    ranges = _ranges(len(view))
    return range(len(ranges)), lambda number: bytes(view[ranges[number][0] : ranges[number][1]])


def _put_parts(client: S3Client, bucket: str, key: str, data: Payload) -> None:
    numbers, part = _part_source(data)
    upload_id = client.call("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    etags: dict[int, str] = {}

    def send(number: int) -> None:
        try:
            body = part(number)
            sent = client.call(
                "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number + 1, Body=body
            )
        except BaseException as exc:
            if isinstance(data, PieceStream):
                data.fail(exc)  # parts not sent are never released: nothing may wait for them
            raise
        etags[number] = sent["ETag"]
        if isinstance(data, PieceStream):
            data.release(number)  # sent: its buffer may serve a later piece

    try:
        _in_parallel(numbers, send)
        client.call(
            "complete_multipart_upload",
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n + 1, "ETag": etags[n]} for n in sorted(etags)]},
        )
    except BaseException:
        with contextlib.suppress(Exception):  # the object never appeared; stray parts are only storage
            client.call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        raise


# ------------------------------------------------------------------ download


def get_verified(fs: fsspec.AbstractFileSystem, path: str, entry: FileEntry, where: str) -> Blob:
    """The object ``path``, checked against ``entry`` (size and every sha256) before it is returned.

    Raises ``CheckpointCorrupt`` naming ``where`` when the object's size or a digest differs,
    ``FileNotFoundError`` when it is missing, and s3fs's errors for anything else.
    """
    if entry.size == 0:  # a ranged read of an empty object is refused (416): its size says it all
        size = int(fs.info(path)["size"])
        if size:
            raise CheckpointCorrupt(f"{where} is {size} bytes, its manifest says 0")
        verify_bytes(b"", entry, where)
        return b""
    if not parallel(fs, entry.size):
        data = fs.cat_file(path, start=0, end=entry.size + 1)  # never more than the manifest says, plus one
        if len(data) != entry.size:
            raise CheckpointCorrupt(f"{where} is {'more' if len(data) > entry.size else len(data)} bytes, "
                                    f"its manifest says {entry.size}")
        verify_bytes(data, entry, where)
        return bytes(data)
    size = int(fs.info(path)["size"])  # before a buffer of the manifest's size is allocated: it may be forged
    if size != entry.size:
        raise CheckpointCorrupt(f"{where} is {size} bytes, its manifest says {entry.size}")
    bucket, key, version = _s3(fs).split_path(path)
    buffer = bytearray(entry.size)
    ranges = _ranges(entry.size)
    hashing: _Hashing
    if entry.chunk_size == PART_BYTES and len(entry.chunks) == len(ranges):
        hashing = _ByChunk(memoryview(buffer), ranges, entry.algorithm)
    elif not entry.chunks and entry.digest is None:
        hashing = _InOrder(memoryview(buffer), ranges)
    else:  # chunks of another size (not written by this grd): checked once every byte is in
        hashing = _Afterwards()
    try:
        _get_parts(_client(fs), bucket, key, version, buffer, entry, where, hashing)
    finally:
        hashing.wait()  # hashing under way reads the buffer
    hashing.check(buffer, entry, where)
    return buffer


class _Hashing(Protocol):
    """How a download is hashed while it arrives: ``arrived(number)`` once per complete range, ``wait()``
    once none can arrive any more, then ``check`` raises ``CheckpointCorrupt`` unless it matched."""

    def arrived(self, number: int) -> None: ...

    def wait(self) -> None: ...

    def check(self, buffer: bytearray, entry: FileEntry, where: str) -> None: ...


class _ByChunk:
    """Each range is one manifest chunk: hashed on its own as soon as it is in."""

    def __init__(self, view: memoryview, ranges: list[tuple[int, int]], algorithm: str) -> None:
        self._view, self._ranges, self._algorithm = view, ranges, algorithm
        hash_function(algorithm)  # a missing package fails here, before any GET
        self._pieces: dict[int, Future[str | None]] = {}

    def arrived(self, number: int) -> None:
        start, stop = self._ranges[number]
        self._pieces[number] = hash_later(self._view[start:stop], self._algorithm)

    def wait(self) -> None:
        for piece in self._pieces.values():
            with contextlib.suppress(Exception):
                piece.result()

    def check(self, buffer: bytearray, entry: FileEntry, where: str) -> None:
        check_pieces([self._pieces[number] for number in range(len(self._ranges))], entry, where)


class _InOrder(InOrderHasher):
    """A format-1 entry without chunk digests (how grd wrote S3 objects before #31): the whole-file sha256,
    hashed in order as ranges arrive."""

    def check(self, buffer: bytearray, entry: FileEntry, where: str) -> None:
        check_sha256(self.hexdigest(), entry, where)


class _Afterwards:
    """Chunks of another size than the ranges: checked once every byte is in."""

    def arrived(self, number: int) -> None:
        pass

    def wait(self) -> None:
        pass

    def check(self, buffer: bytearray, entry: FileEntry, where: str) -> None:
        verify_bytes(buffer, entry, where)


def _get_parts(
    client: S3Client,
    bucket: str,
    key: str,
    version: str | None,
    buffer: bytearray,
    entry: FileEntry,
    where: str,
    hashing: _Hashing,
) -> None:
    view, ranges = memoryview(buffer), _ranges(entry.size)
    extra = {"VersionId": version} if version else {}

    def fetch(number: int) -> None:
        start, stop = ranges[number]

        def read(response: dict[str, Any]) -> None:
            body = response["Body"]
            try:
                _check_total(response.get("ContentRange"), entry, where)
                _read_into(body, view[start:stop], where)
            finally:
                body.close()

        client.call("get_object", read, Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}", **extra)
        hashing.arrived(number)

    try:
        _in_parallel(range(len(ranges)), fetch)
    except CheckpointCorrupt:
        raise
    except Exception:
        _check_size(client, bucket, key, extra, entry, where)  # a shorter object fails ranges past its end
        raise


def _check_total(content_range: str | None, entry: FileEntry, where: str) -> None:
    """``Content-Range: bytes a-b/TOTAL`` must name the manifest's size (the object's size, checked on
    every response)."""
    if not content_range:
        raise OSError(
            f"a ranged GET of {where} came back without Content-Range: this S3 server does not serve byte "
            "ranges, which grd needs for payloads of two parts or more"
        )
    total = content_range.rpartition("/")[2]
    if total != str(entry.size):
        raise CheckpointCorrupt(f"{where} is {total} bytes, its manifest says {entry.size}")


def _read_into(body: Any, target: memoryview, where: str) -> None:
    """Fill ``target`` from the response ``body``; a body that ends early is a short object."""
    done = 0
    while done < len(target):
        count = body.readinto(target[done:])
        if not count:
            raise CheckpointCorrupt(f"{where}: a ranged read ended {len(target) - done} bytes early")
        done += count


def _check_size(
    client: S3Client, bucket: str, key: str, extra: dict[str, str], entry: FileEntry, where: str
) -> None:
    """After a failed download: ``CheckpointCorrupt`` if the object's size differs from the manifest's."""
    try:
        head = client.call("head_object", Bucket=bucket, Key=key, **extra)
    except Exception:
        return  # the original failure says more
    size = head.get("ContentLength")
    if size != entry.size:
        raise CheckpointCorrupt(f"{where} is {size} bytes, its manifest says {entry.size}")
