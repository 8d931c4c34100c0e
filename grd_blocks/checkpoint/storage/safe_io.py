"""Reading what a store holds without trusting it: bounded reads, regular files only, never outside the store.

A store is written by grd, but anyone with access to it can plant things there: a ``LATEST.json`` that is a
symbolic link to ``/dev/zero``, a ``MANIFEST.json`` that is a FIFO, a checkpoint directory that is a link to
somewhere else. Invariants:

* ``LATEST.json`` and ``MANIFEST.json`` are read with a size cap (``POINTER_LIMIT``, ``MANIFEST_LIMIT``): at
  most cap + 1 bytes are ever read, and an object longer than its cap is refused.
* On local disk, everything under a run directory is opened relative to its parent's descriptor with
  ``O_NOFOLLOW`` (a symbolic link is refused, never followed: not a checkpoint directory, not a file in it)
  and ``O_NONBLOCK`` (opening a FIFO never waits for a writer); only a regular file is read or handed to the
  loader (``S_ISREG`` after ``fstat`` of the descriptor that is then read, so nothing can be swapped in
  between). The run directory itself and the store root may be links (a store moved to a bigger disk).
* Every refusal is ``CheckpointCorrupt`` naming the path and what is there instead (a symbolic link and its
  target, a FIFO, a device, a size over the cap), so readers skip it like any damaged checkpoint and fall
  back to the previous valid one. A missing file is ``FileNotFoundError``; other I/O errors pass through for
  ``fsio.guard`` to report as ``StoreUnavailable``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Final

import fsspec

from grd_blocks.errors import CheckpointCorrupt

__all__ = [
    "MANIFEST_LIMIT",
    "POINTER_LIMIT",
    "describe",
    "open_local",
    "read_capped_fd",
    "read_local",
    "read_remote",
]

POINTER_LIMIT: Final = 64 * 2**10
"""Largest ``LATEST.json`` read (64 KiB; grd writes about 250 bytes)."""
MANIFEST_LIMIT: Final = 64 * 2**20
"""Largest ``MANIFEST.json`` read (64 MiB; a manifest lists each payload file, plus chunk digests and the
caller's metadata)."""

_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def describe(path: str, *, dir_fd: int | None = None) -> str:
    """What is at ``path`` (not following a link), for messages: "a symbolic link to /dev/zero", "a FIFO"."""
    try:
        mode = os.lstat(path, dir_fd=dir_fd).st_mode
    except OSError:
        return "not readable"
    if stat.S_ISLNK(mode):
        try:
            return f"a symbolic link to {os.readlink(path, dir_fd=dir_fd)}"
        except OSError:
            return "a symbolic link"
    return _kind(mode)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _refuse(where: str, found: str, wanted: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(
        f"{where} is {found}, not {wanted}; grd reads only what it wrote and never follows a link out of "
        "the store (remove it, or restore the checkpoint it replaced)"
    )


def _open_at(name: str, dir_fd: int, *, directory: bool, where: str) -> int:
    """Open ``name`` in ``dir_fd`` if it is a directory (``directory``) or a regular file, not following a
    link: checked before opening (a device or FIFO is never opened) and again on the descriptor."""
    wanted = "a checkpoint directory" if directory else "a regular file"
    is_wanted = stat.S_ISDIR if directory else stat.S_ISREG
    if not is_wanted(os.lstat(name, dir_fd=dir_fd).st_mode):  # FileNotFoundError when absent
        raise _refuse(where, describe(name, dir_fd=dir_fd), wanted)
    flags = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | (_DIRECTORY if directory else _NONBLOCK)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):  # swapped for a link or a socket meanwhile
            raise _refuse(where, describe(name, dir_fd=dir_fd), wanted) from None
        raise
    mode = os.fstat(fd).st_mode
    if not is_wanted(mode):
        os.close(fd)
        raise _refuse(where, _kind(mode), wanted)
    return fd


def open_local(root: str, parts: tuple[str, ...], root_url: str) -> int:
    """A read-only descriptor of the regular file ``root/parts[0]/.../parts[-1]``, every part opened with
    ``O_NOFOLLOW`` relative to the one before (``root`` itself may be a link); messages name
    ``root_url/...``. The caller closes it."""
    with contextlib.ExitStack() as stack:
        current = os.open(root, os.O_RDONLY | _CLOEXEC | _DIRECTORY)
        stack.callback(os.close, current)
        for depth, part in enumerate(parts):
            where = "/".join((root_url.rstrip("/"), *parts[: depth + 1]))
            last = depth == len(parts) - 1
            current = _open_at(part, current, directory=not last, where=where)
            if not last:
                stack.callback(os.close, current)
        return current
    raise AssertionError("unreachable")


_READ_AHEAD = 64 * 1024  # what a read asks for beyond the size fstat gave (the file may have grown since)


def read_capped_fd(fd: int, cap: int, where: str) -> bytes:
    """The content of ``fd`` (a regular file); ``CheckpointCorrupt`` if it holds more than ``cap`` bytes.
    Each read asks for what the file's size says is left, plus one byte to see its end (a read buffer is
    allocated at the size asked for, and caps are far larger than what grd writes there)."""
    chunks: list[bytes] = []
    total = 0
    size = os.fstat(fd).st_size
    while total <= cap:
        chunk = os.read(fd, min(cap + 1 - total, max(size - total, 0) + _READ_AHEAD))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > cap:
        raise _too_big(where, cap)
    return b"".join(chunks)


def _too_big(where: str, cap: int) -> CheckpointCorrupt:
    return CheckpointCorrupt(
        f"{where} is more than {cap} bytes, larger than grd ever writes there; it was damaged or not written "
        "by grd (remove it: the newest checkpoint that verifies is used instead)"
    )


def read_local(root: str, parts: tuple[str, ...], cap: int, root_url: str) -> bytes:
    """The content of the regular file ``open_local(root, parts, root_url)``, at most ``cap`` bytes."""
    fd = open_local(root, parts, root_url)
    try:
        return read_capped_fd(fd, cap, "/".join((root_url.rstrip("/"), *parts)))
    finally:
        os.close(fd)


def read_remote(fs: fsspec.AbstractFileSystem, path: str, cap: int, where: str) -> bytes:
    """At most ``cap`` bytes of the object at ``path`` (one ranged read); ``CheckpointCorrupt`` if longer."""
    data = bytes(fs.cat_file(path, start=0, end=cap + 1))
    if len(data) > cap:
        raise _too_big(where, cap)
    return data


