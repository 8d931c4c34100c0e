"""Moving one large payload to and from S3 in parallel parts: multipart upload and ranged GETs.

s3fs moves a large object one way or another (``pipe_file`` in batches of parts that wait for the slowest,
``cat_file`` through three whole-object copies). This module does the same transfers over s3fs's own client
(credentials, endpoint, retries, error translation) with fewer copies and no batch barriers.

Invariants:

* Only a real ``s3fs.S3FileSystem`` (``is_s3``) takes these paths; anything else, including wrappers that
  record or fault calls, goes through ``pipe_file``/``cat_file`` unchanged.
* ``put_object``: payloads of at least two ``PART_BYTES`` parts go up as a multipart upload with
  ``PARALLEL_PARTS`` parts in flight (a sliding window: a finished part starts the next one at once). The
  object appears only when ``complete_multipart_upload`` succeeds; any failure aborts the upload (best
  effort) and raises the original error, so a reader never sees a partial object. ``Pieces`` of
  ``PART_BYTES`` (what serialize produces) are sent as they are; other content is copied one part at a time,
  just before that part is sent.
* ``get_verified``: the object is read by ranged GETs, ``PARALLEL_PARTS`` in flight, straight into one
  buffer of the manifest's size. Each range that is one manifest chunk is hashed on the hasher pool as soon
  as it has arrived, overlapping the rest of the download. The buffer is returned only after the object's
  size (every response's ``Content-Range`` total) and every digest matched the manifest entry; otherwise
  ``CheckpointCorrupt`` names ``where``. Nothing that failed or did not verify is ever returned.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem, sync

from grd_blocks.checkpoint.digest import check_pieces, hash_later, verify_bytes
from grd_blocks.checkpoint.manifest import FileEntry
from grd_blocks.checkpoint.serialization import PIECE_BYTES, Blob, Payload, Pieces
from grd_blocks.errors import CheckpointCorrupt

PART_BYTES = PIECE_BYTES
"""Part size of multipart uploads and ranged GETs: 8 MiB, the size of serialize's pieces and of the manifest's
chunks (boto3's default part size too)."""
PARALLEL_PARTS = 8
"""Parts in flight at once, per object."""
_READ_BYTES = 2**20  # one read from a response body: a few socket chunks, copied once into the buffer


def is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is an s3fs filesystem itself (not a wrapper around one)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return isinstance(fs, AsyncFileSystem) and "s3" in protocols and hasattr(fs, "_call_s3")


def _s3(fs: fsspec.AbstractFileSystem) -> Any:
    """``fs`` as what it is once ``is_s3`` said so: an s3fs filesystem (s3fs ships no type hints)."""
    return fs


def parallel(fs: fsspec.AbstractFileSystem, size: int) -> bool:
    """Whether an object of ``size`` bytes on ``fs`` moves in parallel parts (S3, two parts or more)."""
    return size >= 2 * PART_BYTES and is_s3(fs)


# ------------------------------------------------------------------ the window


async def _window(count: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run ``job(0)`` .. ``job(count - 1)`` in order, ``PARALLEL_PARTS`` at a time; the first failure
    cancels the rest and is raised once they have stopped."""
    numbers = iter(range(count))

    async def worker() -> None:
        for number in numbers:
            await job(number)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(PARALLEL_PARTS, count))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _ranges(size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each part of an object of ``size`` bytes."""
    return [(start, min(start + PART_BYTES, size)) for start in range(0, size, PART_BYTES)]


# ------------------------------------------------------------------ upload


def put_object(fs: fsspec.AbstractFileSystem, path: str, data: Payload) -> None:
    """Write ``data`` as the object ``path``: in parallel parts when ``parallel``, else one ``pipe_file``."""
    if not parallel(fs, len(data)):
        fs.pipe_file(path, bytes(data))
        return
    bucket, key, _ = _s3(fs).split_path(path)
    sync(fs.loop, _put_parts, fs, bucket, key, _part_source(data))
    fs.invalidate_cache(path)


def _part_source(data: Payload) -> tuple[int, Callable[[int], bytes]]:
    """``(number of parts, part number -> its bytes)``: ``Pieces`` of ``PART_BYTES`` are sent as they are,
    anything else is cut into ``PART_BYTES`` parts, each copied once when it is about to be sent."""
    if isinstance(data, Pieces) and data.piece_size == PART_BYTES:
        return len(data.pieces), data.pieces.__getitem__
    view = memoryview(bytes(data) if isinstance(data, Pieces) else data)
    ranges = _ranges(len(view))
    return len(ranges), lambda number: bytes(view[ranges[number][0] : ranges[number][1]])


async def _put_parts(fs: Any, bucket: str, key: str, source: tuple[int, Callable[[int], bytes]]) -> None:
    count, part = source
    upload = await fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key)
    upload_id = upload["UploadId"]
    etags = [""] * count

    async def send(number: int) -> None:
        body = part(number)
        done = await fs._call_s3(
            "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number + 1, Body=body
        )
        etags[number] = done["ETag"]

    try:
        await _window(count, send)
        parts = [{"PartNumber": number + 1, "ETag": etag} for number, etag in enumerate(etags)]
        await fs._call_s3(
            "complete_multipart_upload",
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    except BaseException:
        with contextlib.suppress(Exception):  # the object never appeared; stray parts are only storage
            await fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        raise


# ------------------------------------------------------------------ download


def get_verified(fs: fsspec.AbstractFileSystem, path: str, entry: FileEntry, where: str) -> Blob:
    """The object ``path``, checked against ``entry`` (size and every sha256) before it is returned.

    Raises ``CheckpointCorrupt`` naming ``where`` when the object's size or a digest differs,
    ``FileNotFoundError`` when it is missing, and s3fs's errors for anything else.
    """
    if not parallel(fs, entry.size):
        data = fs.cat_file(path)
        verify_bytes(data, entry, where)
        return bytes(data)
    bucket, key, version = _s3(fs).split_path(path)
    buffer = bytearray(entry.size)
    hashed_here = entry.chunk_size == PART_BYTES and len(entry.chunks) == len(_ranges(entry.size))
    pieces: list[Future[str | None]] = []
    try:
        hashing = pieces if hashed_here else None
        sync(fs.loop, _get_parts, fs, bucket, key, version, buffer, entry, where, hashing)
    except BaseException:
        _wait(pieces)  # hashing under way still reads the buffer
        raise
    if hashed_here:
        check_pieces(pieces, entry, where)
    else:
        verify_bytes(buffer, entry, where)
    return buffer


def _wait(pieces: list[Future[str | None]]) -> None:
    """Let hashing that is under way finish before the buffer it reads is dropped."""
    for piece in pieces:
        with contextlib.suppress(Exception):
            piece.result()


async def _get_parts(
    fs: Any,
    bucket: str,
    key: str,
    version: str | None,
    buffer: bytearray,
    entry: FileEntry,
    where: str,
    pieces: list[Future[str | None]] | None,
) -> None:
    view, ranges = memoryview(buffer), _ranges(entry.size)
    hashed: dict[int, Future[str | None]] = {}
    extra = {"VersionId": version} if version else {}

    async def fetch(number: int) -> None:
        start, stop = ranges[number]
        response = await fs._call_s3(
            "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}", **extra
        )
        body = response["Body"]
        try:
            _check_total(response.get("ContentRange"), entry, where)
            await _read_into(body, view[start:stop], where)
        finally:
            body.close()
        if pieces is not None:
            hashed[number] = hash_later(view[start:stop])

    try:
        await _window(len(ranges), fetch)
    except CheckpointCorrupt:
        raise
    except Exception:
        await _check_size(fs, bucket, key, extra, entry, where)  # a shorter object fails ranges past its end
        raise
    finally:
        if pieces is not None:
            pieces.extend(hashed[number] for number in sorted(hashed))


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


async def _read_into(body: Any, target: memoryview, where: str) -> None:
    """Fill ``target`` from the response ``body``; a body that ends early is a short object."""
    done = 0
    while done < len(target):
        chunk = await body.read(min(_READ_BYTES, len(target) - done))
        if not chunk:
            raise CheckpointCorrupt(f"{where}: a ranged read ended {len(target) - done} bytes early")
        target[done : done + len(chunk)] = chunk
        done += len(chunk)


async def _check_size(
    fs: Any, bucket: str, key: str, extra: dict[str, str], entry: FileEntry, where: str
) -> None:
    """After a failed download: ``CheckpointCorrupt`` if the object's size differs from the manifest's."""
    try:
        head = await fs._call_s3("head_object", Bucket=bucket, Key=key, **extra)
    except Exception:
        return  # the original failure says more
    size = head.get("ContentLength")
    if size != entry.size:
        raise CheckpointCorrupt(f"{where} is {size} bytes, its manifest says {entry.size}")
