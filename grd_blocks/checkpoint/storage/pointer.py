"""Updating LATEST.json on S3: read, decide, write, with no other writer's update in between.

``update_conditional(fs, path, decide)`` reads the pointer object with its ETag, calls ``decide(current)``
(``current`` is None when the object is absent or longer than ``POINTER_LIMIT``) and, unless ``decide``
returns None, writes what it returned with ``If-Match: <that ETag>`` (``If-None-Match: *`` when there was no
object). A ``412 Precondition Failed`` (or ``409 ConditionalRequestConflict``) means another writer's update
landed in between: read and decide again, up to ``CAS_ATTEMPTS`` rounds with a short jittered pause. Each
lost round is another writer's successful update, so writers together always progress. The ETag covers the
object's bytes; an update that put identical bytes back (ABA) leaves ``decide`` nothing to see differently.

Invariant: where the server honours these headers, an update commits only if the pointer is still what
``decide`` saw, so a pointer whose every ``decide`` only moves forward never moves backwards, with any number
of writers on any number of machines. ``conditional_writes(fs, path)`` says whether it does: probed once per
process, endpoint and bucket by four PUTs of a probe object beside the pointer (create, create again: must be
refused, wrong ETag: must be refused, right ETag: must succeed), then removed. SeaweedFS (4.x), AWS S3 and
MinIO honour them; a server that ignores them (the second create succeeds) or refuses them as unsupported is
reported once as a warning, and its pointer updates are plain PUTs that run.py follows with the repair loop.
Only a real s3fs filesystem whose botocore client s3client.py can rebuild takes this path.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import fsspec
from botocore.exceptions import ClientError

from grd_blocks.checkpoint.storage import s3client
from grd_blocks.checkpoint.storage.layout import join
from grd_blocks.checkpoint.storage.s3parts import usable
from grd_blocks.checkpoint.storage.safe_io import POINTER_LIMIT
from grd_blocks.errors import StoreUnavailable

__all__ = ["CAS_ATTEMPTS", "conditional_writes", "update_conditional"]

logger = logging.getLogger("grd.checkpoint")

CAS_ATTEMPTS: Final = 200
"""Read-decide-write rounds one update may lose to other writers before it gives up."""
_LOST: Final = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_UNSUPPORTED: Final = {"NotImplemented", "501", "InvalidArgument", "InvalidRequest"}

Decide = Callable[[bytes | None], bytes | None]

_probed: dict[tuple[str, str], bool] = {}
_probe_lock = threading.Lock()


def _code(exc: BaseException) -> str:
    """The S3 error code of a failed request (s3client re-raises it translated, the ClientError chained)."""
    cause = exc if isinstance(exc, ClientError) else exc.__cause__
    if not isinstance(cause, ClientError):
        return ""
    error = cause.response.get("Error", {})
    status = str(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return str(error.get("Code") or status)


def _split(fs: Any, path: str) -> tuple[str, str]:
    bucket, key, _ = fs.split_path(path)
    return str(bucket), str(key)


def _read(client: s3client.S3Client, bucket: str, key: str) -> tuple[bytes | None, str | None]:
    """(the object's bytes, or None when longer than ``POINTER_LIMIT``; its ETag), or (None, None)."""

    def bounded(response: dict[str, Any]) -> tuple[bytes | None, str | None]:
        body = response["Body"]
        try:
            data = body.read(POINTER_LIMIT + 1)
        finally:
            body.close()
        return (data if len(data) <= POINTER_LIMIT else None), str(response["ETag"])

    try:
        result: tuple[bytes | None, str | None] = client.call("get_object", bounded, Bucket=bucket, Key=key)
    except FileNotFoundError:
        return None, None
    return result


def conditional_writes(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether the server behind ``fs`` honours ``If-Match``/``If-None-Match`` on PUT (probed beside
    ``path`` once per process, endpoint and bucket; see the module docstring)."""
    if not usable(fs):
        return False
    client = s3client.client_for(fs)
    bucket, key = _split(fs, path)
    cache_key = (str(client.client.meta.endpoint_url), bucket)
    with _probe_lock:
        if cache_key not in _probed:
            probe_key = f"{key.rsplit('/', 1)[0]}/.grd-cas-probe-{uuid.uuid4().hex}"
            _probed[cache_key] = _probe(client, bucket, probe_key)
            if _probed[cache_key]:
                logger.info("S3 %s bucket %s honours conditional writes: LATEST.json updates use If-Match",
                            cache_key[0], bucket)
            else:
                logger.warning(
                    "S3 %s bucket %s does not honour If-Match/If-None-Match on PUT: LATEST.json updates are "
                    "plain writes followed by a repair (LATEST may step back for a moment while writers "
                    "race, and always ends at the newest committed checkpoint); use a server that supports "
                    "conditional writes for a pointer that never moves backwards", cache_key[0], bucket)
        return _probed[cache_key]


def _probe(client: s3client.S3Client, bucket: str, key: str) -> bool:
    def refused(**condition: str) -> bool:
        try:
            client.call("put_object", Bucket=bucket, Key=key, Body=b"probe", **condition)
        except OSError as exc:
            if _code(exc) in _LOST:
                return True
            raise
        return False

    try:
        created = client.call("put_object", Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*")
        return (
            refused(IfNoneMatch="*")
            and refused(IfMatch='"00000000000000000000000000000000"')
            and not refused(IfMatch=str(created["ETag"]))
        )
    except OSError as exc:
        if _code(exc) in _UNSUPPORTED:
            return False
        raise
    finally:
        try:
            client.call("delete_object", Bucket=bucket, Key=key)
        except OSError:
            logger.debug("could not remove the probe s3://%s/%s", bucket, key, exc_info=True)


def update_conditional(fs: fsspec.AbstractFileSystem, path: str, decide: Decide, *, url: str) -> None:
    """Read the pointer at ``path``, write ``decide(current)`` unless None, atomically (module docstring)."""
    client = s3client.client_for(fs)
    bucket, key = _split(fs, path)
    for attempt in range(CAS_ATTEMPTS):
        current, etag = _read(client, bucket, key)
        data = decide(current)
        if data is None:
            return
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            client.call("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except OSError as exc:
            if _code(exc) not in _LOST:
                raise
        else:
            fs.invalidate_cache(path)
            return
        # a pause between rounds lost to other writers, so that they do not keep colliding (not a wait for
        # anything: the next round re-reads whatever is there)
        time.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.1)))
    raise StoreUnavailable(
        f"checkpoint store {url}: {join(url, path.rsplit('/', 1)[-1])} changed under {CAS_ATTEMPTS} "
        "consecutive conditional updates (other writers won every round); the checkpoint is committed and "
        "the next save updates the pointer. Check for runaway writers on this run key"
    )
