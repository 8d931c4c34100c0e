"""At most one copy of a command runs per key on this machine: a newer start stops the older copy first.

Invariant: a key's lock (``flock`` on ``<runtime dir>/<key>.lock``) is held by the keeper of the copy that
runs, until that copy's whole tree is gone: the keeper holds the descriptor and closes it only then (before
it reports the tree empty, so the next attempt of the same command finds the lock free) or by exiting, however
it exits. A start that finds the lock held asks the holder's keeper to
stop its tree: it writes the stop mark into the lock file, then sends the keeper ``TAKEOVER_SIGNAL``; the
keeper runs its own ladder within the holder's grace if a lock it holds carries the mark (so a keeper that has
moved on to another command ignores the request), and a keeper that saw the mark is never reused. The start
waits for the lock up to that grace plus ``KILL_WAIT_S``, then kills the holder's tree from outside and waits
once more; it never starts while the lock is held, clears the mark once it holds the lock, and says what it
stopped. The runtime directory is ``$GRD_RUNTIME_DIR``, else
``$XDG_RUNTIME_DIR/grd``, else ``<tmp>/grd-<uid>``: one machine, not a cluster.

The holder's record is the first ``RECORD_BYTES`` of the lock file, always rewritten whole (JSON padded with
spaces; blank: no holder known), and the stop mark is one byte further on: a start overwrites both in place
and never truncates the file. (A truncate of a lock file that held a record frees its block: on a
journalling filesystem it waits for the journal commit of every concurrent fsync, about a millisecond per
command while a run's progress is being committed.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from grd_blocks.errors import ProcessError
from grd_blocks.process import procfs
from grd_blocks.process.supervisor.keeper import STOP_MARK, STOP_MARK_OFFSET, TAKEOVER_SIGNAL

__all__ = ["KILL_WAIT_S", "RECORD_BYTES", "Claim", "claim", "runtime_dir"]

KILL_WAIT_S = 5.0
RECORD_BYTES = 4096  # the holder's record: what a later start reads (STOP_MARK_OFFSET lies past it)
_BLANK = b" " * RECORD_BYTES
_KEY = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_POLL_S = 0.02


def runtime_dir() -> Path:
    """Where the locks live (see the module docstring)."""
    explicit = os.environ.get("GRD_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "grd"
    return Path(tempfile.gettempdir()) / f"grd-{os.getuid()}"


@dataclass
class Claim:
    """A held lock (``fd``, to be handed to the keeper) and what was stopped to get it."""

    fd: int
    path: str
    stopped: str | None = None

    def record(self, *, keeper_pid: int | None, grace_s: float, label: str) -> None:
        """Say who holds the lock now (read by a later start that has to stop this copy)."""
        stat = procfs.read_stat(keeper_pid) if keeper_pid is not None else None
        info = {
            "keeper": keeper_pid,
            "start": None if stat is None else stat.start,
            "grace": grace_s,
            "label": label,
            "since": time.time(),
        }
        record = json.dumps(info).encode()
        while len(record) > RECORD_BYTES:  # a long label (escaped, up to 12 bytes a character) is cut to fit
            info["label"] = label = label[: len(label) // 2]
            record = json.dumps(info).encode()
        with contextlib.suppress(OSError):
            os.pwrite(self.fd, record.ljust(RECORD_BYTES), 0)

    def close(self) -> None:
        """Close this process's descriptor (the keeper keeps its own; the lock lives as long as it does)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def claim(key: str) -> Claim:
    """Take ``key``'s lock, stopping the copy that holds it if there is one; ``ProcessError`` if it cannot be
    stopped or the key is not a relative path of ``[A-Za-z0-9_.-]`` names."""
    if not _KEY.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
        raise ProcessError(f"exclusive key {key!r} is invalid: use names of [A-Za-z0-9_.-] joined by '/'")
    # A str, not a Path: pathlib interns each name of a path it parses, and interned strings share one
    # table that dead names fill until it is rebuilt at twice its size (~2 MB in a phase of ~10,000).
    path = os.path.join(runtime_dir(), f"{key}.lock")
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ProcessError(
            f"cannot open the lock {path} ({exc}): set GRD_RUNTIME_DIR to a writable folder"
        ) from exc
    if _try_lock(fd):
        return _held(fd, path)
    started = time.monotonic()
    holder = _holder(fd)
    keeper = _live_keeper(holder)
    grace = holder.get("grace")
    grace = float(grace) if isinstance(grace, int | float) else 5.0
    label = holder.get("label") or key
    if keeper is not None:
        with contextlib.suppress(OSError):
            os.pwrite(fd, STOP_MARK, STOP_MARK_OFFSET)
        with contextlib.suppress(ProcessLookupError):
            os.kill(keeper, TAKEOVER_SIGNAL)  # the keeper stops its tree: SIGTERM, its grace, SIGKILL
    if not _wait_lock(fd, grace + KILL_WAIT_S):
        if keeper is not None:
            _kill_from_outside(keeper)
        if not _wait_lock(fd, KILL_WAIT_S):
            os.close(fd)
            raise ProcessError(
                f"an earlier copy of {label} still holds {path} (keeper pid {keeper}) and could not be "
                "stopped; kill it, then start again"
            )
    took = time.monotonic() - started
    what = f"keeper pid {keeper}" if keeper is not None else "a copy whose keeper was already exiting"
    stopped = f"stopped an earlier copy still running ({what}); it was gone after {took:.2f}s"
    return _held(fd, path, stopped)


def _held(fd: int, path: str, stopped: str | None = None) -> Claim:
    """The lock is ours: blank the previous holder's record and clear any stop mark left for it."""
    with contextlib.suppress(OSError):
        os.pwrite(fd, _BLANK, 0)
        if os.pread(fd, len(STOP_MARK), STOP_MARK_OFFSET) == STOP_MARK:
            os.pwrite(fd, b" " * len(STOP_MARK), STOP_MARK_OFFSET)
    return Claim(fd, path, stopped=stopped)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait_lock(fd: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while True:
        if _try_lock(fd):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(_POLL_S)  # flock has no timed wait: a bounded poll of the kernel's answer


def _holder(fd: int) -> dict[str, object]:
    try:
        info = json.loads(os.pread(fd, RECORD_BYTES, 0).strip() or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _live_keeper(holder: dict[str, object]) -> int | None:
    pid, start = holder.get("keeper"), holder.get("start")
    if not isinstance(pid, int):
        return None
    stat = procfs.read_stat(pid)
    if stat is None or not stat.alive or (isinstance(start, int) and stat.start != start):
        return None
    return pid


def _kill_from_outside(keeper: int) -> None:
    """The holder's keeper did not stop its tree in time: stop and kill its descendants, then the keeper (in
    a PID namespace that alone kills everything left)."""
    tree = list(procfs.descendants(keeper))
    for signum in (signal.SIGSTOP, signal.SIGKILL):
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
    with contextlib.suppress(ProcessLookupError):
        os.kill(keeper, signal.SIGKILL)
