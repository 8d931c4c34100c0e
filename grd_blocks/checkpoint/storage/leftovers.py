"""Multipart uploads that a killed S3 save left behind: listed and aborted.

Invariant: ``stale_uploads`` lists only in-progress multipart uploads whose key lies under the store's root
and that were started at least ``older_than_s`` ago (a live writer's upload is younger than any sane bound:
one save's parts take seconds to minutes); ``abort_uploads`` aborts exactly those it is given and returns
how many are gone. Nothing committed is touched: a multipart upload is not an object until it completes, and
grd completes one only for a file its manifest will list. On a store that is not S3 both return nothing.
On AWS such parts are billed storage nobody sees; a bucket lifecycle rule
(``AbortIncompleteMultipartUpload``, ``DaysAfterInitiation: 1``) removes them without grd.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fsspec

from grd_blocks.checkpoint.storage import s3parts

__all__ = ["StaleUpload", "abort_uploads", "stale_uploads"]


@dataclass(frozen=True)
class StaleUpload:
    """One in-progress multipart upload: its bucket, key, id and when it started."""

    bucket: str
    key: str
    upload_id: str
    started: datetime


def stale_uploads(fs: fsspec.AbstractFileSystem, root: str, *, older_than_s: float) -> list[StaleUpload]:
    """The multipart uploads under ``root`` (``bucket/prefix``) started ``older_than_s`` or more ago."""
    if not s3parts.usable(fs):
        return []
    from grd_blocks.checkpoint.storage import s3client  # botocore only once S3 is in use

    bucket, _, prefix = root.strip("/").partition("/")
    client = s3client.client_for(fs)
    scope = prefix.rstrip("/") + "/" if prefix else ""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    found: list[StaleUpload] = []
    marker: dict[str, Any] = {}
    while True:
        page = client.call("list_multipart_uploads", Bucket=bucket, Prefix=scope, **marker)
        for upload in page.get("Uploads", []):
            started = upload["Initiated"]
            started = started if started.tzinfo else started.replace(tzinfo=UTC)
            if started <= cutoff:
                found.append(StaleUpload(bucket, str(upload["Key"]), str(upload["UploadId"]), started))
        if not page.get("IsTruncated"):
            return found
        marker = {"KeyMarker": page.get("NextKeyMarker", ""),
                  "UploadIdMarker": page.get("NextUploadIdMarker", "")}


def abort_uploads(fs: fsspec.AbstractFileSystem, uploads: list[StaleUpload]) -> int:
    """Abort each of ``uploads``; how many were aborted (one already gone counts: its parts are gone)."""
    if not uploads:
        return 0
    from grd_blocks.checkpoint.storage import s3client
    client = s3client.client_for(fs)
    for upload in uploads:
        try:
            client.call("abort_multipart_upload", Bucket=upload.bucket, Key=upload.key,
                        UploadId=upload.upload_id)
        except Exception as exc:
            if "NoSuchUpload" not in str(exc):
                raise
    return len(uploads)
