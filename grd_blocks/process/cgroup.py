"""cgroup v2 for commands: where the hierarchy is, a command's cgroup made and removed, its members, its kill.

Invariant: a command's cgroup ``grd-<owner pid>-<n>`` lies directly below the cgroup grd was in when its
guardian started; the guardian creates it before the command's keeper exists and removes it once the keeper
has been reaped, and the keeper joins it before it starts the command, so every process of the tree begins
inside it (a process may move itself out: the cgroup is a second net, never the only one). ``kill`` writes
``cgroup.kill``, which the kernel applies to the whole subtree at once, keeper included. A cgroup left by a
grd and guardian killed hard is removed by the next guardian started below the same parent (``clean_stale``).
Where: the cgroup2 mount is the ``cgroup2`` line of ``/proc/self/mounts`` (on hybrid hosts e.g.
``/sys/fs/cgroup/unified``), the current group the ``0::`` line of ``/proc/self/cgroup``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = [
    "cgroup2_mount",
    "clean_stale",
    "create",
    "current_cgroup_dir",
    "join",
    "kill",
    "members",
    "populated",
    "remove",
]


def cgroup2_mount() -> Path | None:
    """The mount point of the cgroup2 hierarchy, or ``None`` if there is none."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    return Path(fields[1].replace("\\040", " "))
    except OSError:
        return None
    return None


def current_cgroup_dir() -> Path | None:
    """The directory of this process's cgroup2 group (``0::/path``), or ``None``."""
    mount = cgroup2_mount()
    if mount is None:
        return None
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as groups:
            for line in groups:
                if line.startswith("0::"):
                    rel = line[3:].strip()
                    if rel.startswith("/..") or " (deleted)" in rel:
                        return None  # outside our cgroup namespace, or gone
                    path = mount / rel.lstrip("/")
                    return path if path.is_dir() else None
    except OSError:
        return None
    return None


def create(parent: Path, name: str) -> Path:
    """Make the empty cgroup ``parent/name``; ``OSError`` if the kernel refuses."""
    path = parent / name
    path.mkdir()
    return path


def join(path: Path) -> None:
    """Move the calling process into ``path`` (its future children start there too)."""
    with open(path / "cgroup.procs", "w", encoding="ascii") as procs:
        procs.write("0")


def members(path: Path) -> set[int]:
    """Pids in ``path`` or below it (as ``cgroup.procs`` lists them); empty if it is gone."""
    pids: set[int] = set()
    for root, _dirs, _files in os.walk(path):
        try:
            with open(os.path.join(root, "cgroup.procs"), encoding="ascii") as procs:
                pids.update(int(line) for line in procs if line.strip())
        except (OSError, ValueError):
            continue
    return pids


def populated(path: Path) -> bool | None:
    """The ``populated`` flag of ``cgroup.events``; None if it cannot be read."""
    try:
        data = (path / "cgroup.events").read_bytes()
    except OSError:
        return None
    if b"populated 1" in data:
        return True
    return False if b"populated 0" in data else None


def kill(path: Path) -> bool:
    """SIGKILL every process in ``path`` and below, atomically (``cgroup.kill``, Linux 5.14+); False if that
    file is missing or cannot be written."""
    try:
        with open(path / "cgroup.kill", "w", encoding="ascii") as handle:
            handle.write("1")
        return True
    except OSError:
        return False


def remove(path: Path) -> bool:
    """Remove ``path`` and the cgroups below it, deepest first; False if one is still busy."""
    ok = True
    try:
        subdirs = [entry.path for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        subdirs = []
    for sub in subdirs:
        ok = remove(Path(sub)) and ok
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return ok


def clean_stale(parent: Path) -> None:
    """Remove the empty ``grd-<pid>-*`` cgroups below ``parent`` whose owner pid no longer exists."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            parts = entry.name.split("-")
            ours = len(parts) == 3 and parts[0] == "grd" and parts[1].isdigit()
            if ours and not os.path.exists(f"/proc/{parts[1]}") and entry.is_dir(follow_symlinks=False):
                remove(Path(entry.path))
