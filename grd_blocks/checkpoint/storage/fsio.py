"""Opening a store URL as an fsspec filesystem, and turning backend failures into ``StoreUnavailable``.

Invariant: every storage error that is not "this object does not exist" leaves grd as ``StoreUnavailable``
naming the store URL and the operation (disk full, server unreachable, wrong credentials), with the original
error chained; programming errors (TypeError, ...) and grd's own errors pass through unchanged. A URL no
installed fsspec implementation can open (an unknown protocol, a missing package) is a ``ConfigError``: the
user's mistake, not the store's failure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from grd_blocks.errors import ConfigError, GrdError, StoreUnavailable

_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError, KeyError, IndexError)


def open_fs(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """``url`` -> (filesystem, root path in that filesystem's own notation)."""
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


def unavailable(url: str, operation: str, exc: BaseException) -> StoreUnavailable:
    error = StoreUnavailable(
        f"checkpoint store {url}: {operation} failed ({type(exc).__name__}: {exc}); "
        "committed checkpoints and "
        "the previous latest are intact. Check free disk space, that the server/endpoint is reachable, "
        "and the credentials"
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
