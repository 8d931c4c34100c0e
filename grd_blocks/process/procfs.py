"""Read-only views of ``/proc`` used to find the processes of a command's tree.

Invariant: nothing here sends a signal or changes any state, and every reader tolerates a process that
vanishes while it is being read (it is skipped or ``None`` is returned): a process tree changes under our
feet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROC = "/proc"

__all__ = ["ProcStat", "all_stats", "cmdline", "descendants", "environ_value", "is_alive", "read_stat"]


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` grd needs: parent, session, state (``Z`` = zombie) and start time
    (clock ticks after boot: with the pid it identifies a process even if the pid is later reused)."""

    pid: int
    ppid: int
    sid: int
    state: str
    start: int

    @property
    def alive(self) -> bool:
        """True unless the process has exited (zombie ``Z`` or dead ``X``)."""
        return self.state not in ("Z", "X")


def _read(path: str, limit: int = 65536) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, limit)
            if not chunk:
                break
            chunks.append(chunk)
            if len(chunk) < limit:
                break
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_stat(pid: int) -> ProcStat | None:
    """Parse ``/proc/PID/stat``; ``None`` if the process is gone (or the file is unreadable)."""
    data = _read(f"{PROC}/{pid}/stat", 4096)
    if not data:
        return None
    # The command name is in parentheses and may itself contain spaces and ')': split after the last ')'.
    close = data.rfind(b")")
    fields = data[close + 2 :].split()
    if len(fields) < 20:
        return None
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        sid=int(fields[3]),
        state=fields[0].decode("ascii", "replace"),
        start=int(fields[19]),
    )


def all_stats() -> dict[int, ProcStat]:
    """Every process visible in ``/proc`` (thread-group leaders only), by pid."""
    stats: dict[int, ProcStat] = {}
    try:
        names = os.listdir(PROC)
    except OSError:
        return stats
    for name in names:
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie counts as gone)."""
    stat = read_stat(pid)
    return stat is not None and stat.alive


def environ_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in the environment ``pid`` was exec'd with; ``None`` if absent or unreadable."""
    data = _read(f"{PROC}/{pid}/environ")
    if not data:
        return None
    prefix = name.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode("utf-8", "replace")
    return None


def descendants(root: int, stats: dict[int, ProcStat] | None = None) -> dict[int, ProcStat]:
    """Every process below ``root`` by parent pid (live or zombie), ``root`` itself excluded."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    found: dict[int, ProcStat] = {}
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        if pid in found or pid == root:
            continue
        found[pid] = stats[pid]
        stack.extend(children.get(pid, ()))
    return found


def cmdline(pid: int, limit: int = 200) -> str:
    """``pid``'s command line as one string (arguments joined by spaces, cut at ``limit``); "" if gone."""
    data = _read(f"{PROC}/{pid}/cmdline", 4096) or b""
    text = data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 3] + "..."
