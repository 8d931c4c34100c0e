"""Helpers for the process tests: pid files from the children, an independent /proc check, a gate clock."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from grd_blocks.process.cgroup import CgroupTree

TREE_CHILD = str(Path(__file__).with_name("tree_child.py"))
SETUP_TIMEOUT_S = 30.0  # how long a tree may take to start before the test gives up waiting for it


def cgroup_available() -> bool:
    tree = CgroupTree.create()
    if tree is None:
        return False
    tree.close()
    return True


def running(pid: int) -> bool:
    """Independent of grd: does /proc say ``pid`` exists and is not a zombie?"""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    state = data[data.rfind(b")") + 2 :].split()[0]
    return state not in (b"Z", b"X")


def recorded_pids(pid_dir: Path) -> dict[str, int]:
    return {path.stem: int(path.read_text()) for path in pid_dir.glob("*.pid")}


def zombie_children(pids: list[int]) -> list[int]:
    """The pids that are zombies whose parent is this process: grd must reap what it inherits."""
    me = str(os.getpid()).encode()
    found = []
    for pid in pids:
        try:
            data = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if fields[0] == b"Z" and fields[1] == me:
            found.append(pid)
    return found


class GateClock:
    """Real monotonic time until ``ready()`` holds, then 10^6 s later: the deadline (``DEADLINE_IN`` from the
    start) passes exactly when the tree is fully set up, or after ``SETUP_TIMEOUT_S`` so a broken child fails
    the test instead of hanging it."""

    DEADLINE_IN = 5e5

    def __init__(self, ready: Callable[[], bool] | Path) -> None:
        self.ready: Callable[[], bool] = ready.exists if isinstance(ready, Path) else ready
        self.jump = 0.0
        self.give_up = time.monotonic() + SETUP_TIMEOUT_S
        self.deadline = time.monotonic() + self.DEADLINE_IN

    def __call__(self) -> float:
        now = time.monotonic()
        if not self.jump and (now > self.give_up or self.ready()):
            self.jump = 1e6
        return now + self.jump


def tree_argv(pid_dir: Path, *kinds: str) -> list[str]:
    return [sys.executable, TREE_CHILD, str(pid_dir), *kinds]


def wait_for(condition: Callable[[], bool], timeout: float = SETUP_TIMEOUT_S) -> bool:
    """Poll ``condition()`` until true or ``timeout``; a bounded wait, not a sleep standing in for sync."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return bool(condition())
