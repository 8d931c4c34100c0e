"""Opening a store URL as an fsspec filesystem, and turning backend failures into ``StoreUnavailable``.

Invariant: every storage error that is not "this object does not exist" leaves grd as ``StoreUnavailable``
naming the store URL and the operation (disk full, server unreachable, wrong credentials), with the original
error chained; programming errors (TypeError, ...) and grd's own errors pass through unchanged. A URL no
installed fsspec implementation can open (an unknown protocol, a missing package) is a ``ConfigError``: the
user's mistake, not the store's failure.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from grd_blocks.errors import ConfigError, GrdError, StoreUnavailable

_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError, KeyError, IndexError)


_BUCKETED = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.DOTALL)


def check_store_url(url: str) -> None:
    """A ``scheme://...`` URL must name a place: ``s3://``, ``s3:///p`` (no bucket), ``file://`` (no path)
    and ``s3:/bucket/p`` (a slash short) are ``ConfigError``s, not a local folder named ``s3:``. A path with
    no scheme, or a Windows drive (``C:\\x``), passes."""
    found = _SCHEME.match(url)
    if found is None or len(found[1]) == 1:  # a plain path, or a drive letter
        return
    scheme, rest = found[1].lower(), found[2]
    shape = "bucket/prefix" if scheme in _BUCKETED else "/absolute/path"
    fix = f"write it as {scheme}://{shape} (or a local path such as ./checkpoints)"
    if not rest.startswith("//"):
        if scheme in _BUCKETED or scheme in fsspec.available_protocols():
            raise ConfigError(f"checkpoint store {url!r} is missing a slash after '{scheme}:'; {fix}")
        return  # 'name:with-colon' is a relative local path
    where = rest[2:]
    if not where.strip("/"):
        raise ConfigError(f"checkpoint store {url!r} names no {'bucket' if scheme in _BUCKETED else 'path'}; "
                          f"{fix}")
    if scheme in _BUCKETED and where.startswith("/"):
        raise ConfigError(f"checkpoint store {url!r} has an empty bucket name (three slashes); {fix}")


def open_fs(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """``url`` -> (filesystem, root path in that filesystem's own notation); a URL that names no place is a
    ``ConfigError`` (``check_store_url``)."""
    check_store_url(url)
    try:
        with guard(url, "open the store"):
            fs, path = url_to_fs(url, **dict(storage_options or {}))
    except StoreUnavailable as exc:
        cause = exc.__cause__
        if isinstance(cause, ImportError) or (isinstance(cause, ValueError) and "Protocol" in str(cause)):
            raise ConfigError(
                f"checkpoint store {url!r} cannot be opened ({cause}); use a local path (./checkpoints), "
                "s3://bucket/prefix, or another fsspec URL whose package is installed"
            ) from None
        raise
    return fs, str(path).rstrip("/") or "/"


_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                "NoCredentials")


def _fix(exc: BaseException) -> str:
    """What to check, from what failed (an errno, an S3 error code); the generic list only when unknown."""
    number = getattr(exc, "errno", None)
    text = f"{type(exc).__name__} {exc}"
    if number in _FULL:
        return "Free disk space (or raise the quota)"
    if number in _DENIED:
        return "Check that this user may write there (permissions, a read-only mount)"
    if any(code in text for code in _CREDENTIALS):
        return "Check the credentials (the key, the secret, the bucket's policy)"
    if isinstance(exc, ConnectionError | TimeoutError) or "Connect" in type(exc).__name__:
        return "Check that the server/endpoint is reachable"
    return "Check free disk space, that the server/endpoint is reachable, and the credentials"


def unavailable(url: str, operation: str, exc: BaseException) -> StoreUnavailable:
    error = StoreUnavailable(
        f"checkpoint store {url}: {operation} failed ({type(exc).__name__}: {exc}); "
        f"committed checkpoints and the previous latest are intact. {_fix(exc)}"
    )
    error.url = url  # type: ignore[attr-defined]
    error.operation = operation  # type: ignore[attr-defined]
    return error


@contextmanager
def guard(url: str, operation: str, *, missing_ok: bool = False) -> Iterator[None]:
    """Re-raise storage failures inside the block as ``StoreUnavailable``.

    With ``missing_ok`` a ``FileNotFoundError`` passes through for the caller to handle (absent objects are
    normal when reading); without it, a missing object (e.g. no such bucket) is a store failure too.
    """
    try:
        yield
    except GrdError:
        raise
    except FileNotFoundError as exc:
        if missing_ok:
            raise
        raise unavailable(url, operation, exc) from exc
    except _PROGRAMMING_ERRORS:
        raise
    except Exception as exc:
        raise unavailable(url, operation, exc) from exc
