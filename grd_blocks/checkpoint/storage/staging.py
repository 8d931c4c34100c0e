"""Local staging entries (``.tmp-*`` / ``.old-*`` in a run directory): their names; sweeping stale ones.

A local commit stages a checkpoint in ``.tmp-{name}-{token}-{writer tag}-{pid}/`` and moves a replaced one
aside to ``.old-...``; ``LATEST.json`` is staged as a ``.tmp-LATEST.json-...`` file. A writer that crashes
leaves them behind (invisible to readers, but they take disk space).

Invariant: ``sweep_stale`` removes an entry only when no live writer can still be using it:

* its writer tag (this host, boot and pid namespace) matches ours and its writer is gone: no process has its
  pid, or that process has exited and waits to be reaped (a zombie: a killed writer whose parent, such as a
  container's init, has not reaped it yet), or it started well after the entry was written (its pid was
  reused: ``REUSE_MARGIN_S`` allows for the boot time's one-second resolution and for wall-clock steps); or
* it has another writer tag or none (another host, an older grd) and nothing in it changed for
  ``STALE_AFTER_S``.

It never touches anything whose name does not start with ``.tmp-`` or ``.old-``; failures are logged, never
raised (a sweep runs after a commit succeeded and must not fail it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import time
import uuid
from functools import cache
from typing import Final

from grd_blocks.checkpoint.storage.layout import MANIFEST_NAME, OLD_PREFIX, TMP_PREFIX

logger = logging.getLogger("grd.checkpoint")

STALE_AFTER_S: Final = 3600.0
"""Age after which a staging entry of an unknown (or other-host) writer is removed."""

REUSE_MARGIN_S: Final = 60.0
"""A process that started this long after a staging entry's oldest timestamp cannot be the entry's writer."""

_OWNER_RE: Final = re.compile(r"-(?P<tag>[0-9a-f]{8})-(?P<pid>[0-9]+)$")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@cache
def writer_tag() -> str:
    """8 hex chars naming this host, boot and pid namespace (where a pid in a staging name is meaningful)."""
    identity = f"{socket.gethostname()}|{_boot_id()}|{_pid_namespace()}"
    return hashlib.sha256(identity.encode()).hexdigest()[:8]


def staging_name(prefix: str, what: str) -> str:
    """``.tmp-step_3-{token}-{tag}-{pid}`` for ``(TMP_PREFIX, "step_3")``."""
    return f"{prefix}{what}-{uuid.uuid4().hex[:12]}-{writer_tag()}-{os.getpid()}"


def _process_start(pid: int) -> tuple[str, float] | None:
    """(state letter, start time in epoch seconds) of ``pid`` from /proc (Linux); None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # after "pid (comm)": comm may hold anything
        with open("/proc/stat") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith("btime "))
        return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def _pid_alive(pid: int, *, written_since: float | None = None) -> bool:
    """Whether the writer with ``pid`` may still be running: its pid exists, it is no zombie, and (with
    ``written_since``, the entry's oldest timestamp) it started before the entry was written."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    known = _process_start(pid)
    if known is None:
        return True  # no /proc: a process with that pid exists, so it may be the writer
    state, started = known
    if state in ("Z", "X"):
        return False
    return written_since is None or started <= written_since + REUSE_MARGIN_S


def _mtimes(path: str) -> list[float]:
    """The modification times of ``path`` and of the entries directly in it."""
    times = [os.lstat(path).st_mtime]
    if os.path.isdir(path) and not os.path.islink(path):
        for entry in os.scandir(path):
            with contextlib.suppress(FileNotFoundError):
                times.append(entry.stat(follow_symlinks=False).st_mtime)
    return times


def _first_write(path: str) -> float:
    """The oldest modification time of ``path`` and its entries (its writer started before)."""
    return min(_mtimes(path))


def _last_change(path: str) -> float:
    return max(_mtimes(path))


def is_stale(path: str, *, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether the staging entry at ``path`` can no longer belong to a live writer (see the invariant)."""
    name = os.path.basename(path)
    if not name.startswith((TMP_PREFIX, OLD_PREFIX)):
        return False
    owner = _OWNER_RE.search(name)
    if owner is not None and owner.group("tag") == writer_tag():
        try:
            since = _first_write(path)
        except FileNotFoundError:
            return False
        return not _pid_alive(int(owner.group("pid")), written_since=since)
    try:
        age = (time.time() if now is None else now) - _last_change(path)
    except FileNotFoundError:
        return False
    return age >= stale_after_s


def remove_tree(path: str) -> None:
    """Delete a checkpoint-like directory manifest first (so it is never seen half-deleted), or a file."""
    if os.path.isdir(path) and not os.path.islink(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, MANIFEST_NAME))
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def sweep_stale(run_dir: str, *, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Remove the stale staging entries directly inside ``run_dir``; returns the names removed."""
    removed: list[str] = []
    try:
        entries = [
            entry.name for entry in os.scandir(run_dir) if entry.name.startswith((TMP_PREFIX, OLD_PREFIX))
        ]
    except OSError:
        logger.warning("cannot list %s to sweep stale staging entries", run_dir, exc_info=True)
        return removed
    for name in entries:
        path = os.path.join(run_dir, name)
        try:
            if is_stale(path, now=now, stale_after_s=stale_after_s):
                logger.info("removing stale staging entry %s (its writer is gone)", path)
                remove_tree(path)
                removed.append(name)
        except OSError:
            logger.warning("cannot sweep stale staging entry %s", path, exc_info=True)
    return removed
