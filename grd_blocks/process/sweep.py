"""The fallback containment: this process is a child subreaper while the command runs; /proc is swept.

Invariant: a process belongs to the command's tree if it is the main child, shares the main child's session,
is one of our direct children (orphans are reparented to us, the subreaper) whose environment carries the
command's ``GRD_TREE_TOKEN``, was found as a member before (same pid *and* start time, so pid reuse cannot
fool it), or descends (by parent pid) from any of those. This finds grandchildren, ``setsid`` escapes and
double-forked daemons that kept their environment. Limit: a process that calls ``setsid``, scrubs its
environment *and* is orphaned is indistinguishable from an unrelated orphan; only the cgroup path catches it.

``kill()`` first freezes every member with SIGSTOP, rescanning until no new member appears (a stopped process
cannot fork), then sends SIGKILL: a fork loop cannot outrun it. Zombies of members reparented to us are reaped
by pid (never ``waitpid(-1)``, which would steal other code's children); the main child is left to its
``Popen``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections import defaultdict

from grd_blocks.process import procfs

__all__ = ["TOKEN_ENV", "SweepTree", "become_subreaper", "is_subreaper", "release_subreaper"]

log = logging.getLogger("grd.process")

TOKEN_ENV = "GRD_TREE_TOKEN"
_PR_SET_CHILD_SUBREAPER = 36

_subreaper_lock = threading.Lock()
_subreaper_users = 0  # SweepTrees alive now: the process is a subreaper only while one exists
_subreaper_ok: bool | None = None  # None: not tried yet; False: the kernel refused


def _prctl_subreaper(on: bool) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Make this process a child subreaper while at least one caller holds it (pair with
    ``release_subreaper``); False where the kernel or platform refuses."""
    global _subreaper_users, _subreaper_ok
    with _subreaper_lock:
        if _subreaper_ok is False:
            return False
        if _subreaper_users == 0:
            _subreaper_ok = _prctl_subreaper(True)
            if not _subreaper_ok:
                log.warning("cannot become a child subreaper; the tree is found by a full /proc scan only")
                return False
        _subreaper_users += 1
        return True


def release_subreaper() -> None:
    """Undo one ``become_subreaper``; the last release turns the subreaper flag off again, so orphans of
    unrelated code go back to init instead of piling up as zombies in this process."""
    global _subreaper_users
    with _subreaper_lock:
        if _subreaper_users > 0:
            _subreaper_users -= 1
            if _subreaper_users == 0:
                _prctl_subreaper(False)


def is_subreaper() -> bool:
    """True while some SweepTree holds the subreaper flag in this process."""
    return _subreaper_users > 0


def _has_token(pid: int, token: str) -> bool:
    value = procfs.environ_value(pid, TOKEN_ENV)
    return value is not None and token in value.split(":")


class SweepTree:
    """Containment by subreaper + /proc sweep; see the module docstring."""

    kind = "subreaper"

    def __init__(self, token: str) -> None:
        self.token = token
        self.me = os.getpid()
        self.subreaper = become_subreaper()
        self.main_pid: int | None = None
        self.seen: dict[int, int] = {}  # pid -> start time of every member ever found
        self.last_live: set[int] = set()

    # --- membership ---------------------------------------------------------------------------------

    def _scan(self) -> dict[int, procfs.ProcStat]:
        """Every current member, live or zombie."""
        stats = procfs.all_stats()
        main = self.main_pid
        children: dict[int, list[int]] = defaultdict(list)
        seeds: list[int] = []
        for pid, stat in stats.items():
            if pid == self.me:
                continue
            children[stat.ppid].append(pid)
            if (
                pid == main
                or (main is not None and stat.sid == main)
                or self.seen.get(pid) == stat.start
                or (
                    stat.alive
                    and (stat.ppid == self.me or not self.subreaper)
                    and _has_token(pid, self.token)
                )
            ):
                seeds.append(pid)
        members: dict[int, procfs.ProcStat] = {}
        stack = seeds
        while stack:
            pid = stack.pop()
            if pid in members or pid == self.me:
                continue
            members[pid] = stats[pid]
            stack.extend(children.get(pid, ()))
        self.seen.update((pid, stat.start) for pid, stat in members.items())
        return members

    def _reap(self, members: dict[int, procfs.ProcStat]) -> None:
        for pid, stat in members.items():
            if not stat.alive and stat.ppid == self.me and pid != self.main_pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    # --- ProcessTree --------------------------------------------------------------------------------

    def prepare(self, argv: list[str], *, shell: bool, env: dict[str, str]) -> list[str]:
        outer = env.get(TOKEN_ENV)
        env[TOKEN_ENV] = f"{outer}:{self.token}" if outer else self.token
        return ["/bin/sh", "-c", argv[0]] if shell else argv

    def attach(self, pid: int) -> None:
        self.main_pid = pid

    def main_exited(self) -> None:
        pass  # the sweep still needs the main pid: it names the session and is the one zombie not to reap

    def live(self) -> set[int]:
        members = self._scan()
        self._reap(members)
        self.last_live = {pid for pid, stat in members.items() if stat.alive}
        return set(self.last_live)

    def signal(self, signum: int) -> int:
        done: set[int] = set()
        for _ in range(20):
            new = self.live() - done
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            done |= new
        return len(done)

    def kill(self) -> int:
        stopped: set[int] = set()
        for _ in range(100):
            new = self.live() - stopped
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= new
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(stopped)

    def wait_empty(self, timeout: float) -> bool:
        end = time.monotonic() + max(0.0, timeout)
        pause = 0.0005
        # Start from the last sweep's members (every signal round ends with one): no extra sweep up front.
        waiting = {pid for pid in self.last_live if self._running_member(pid)} or self.live()
        while waiting:
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.01)
            # Cheap check of the known members; a full /proc sweep only once they are all gone.
            waiting = {pid for pid in waiting if self._running_member(pid)} or self.live()
        return True

    def _running_member(self, pid: int) -> bool:
        stat = procfs.read_stat(pid)
        return stat is not None and stat.alive and self.seen.get(pid) == stat.start

    def close(self) -> None:
        for pid, start in self.seen.items():
            stat = procfs.read_stat(pid)
            if stat is not None and not stat.alive and stat.ppid == self.me and stat.start == start:
                self._reap({pid: stat})
        if self.subreaper:
            self.subreaper = False
            release_subreaper()
