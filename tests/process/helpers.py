"""Helpers for the process tests: an independent /proc scan by marker, the host's modes, a gate clock.

Survivors are counted without grd's help: every process of a test tree carries its pid directory in its
command line, and ``marked`` reads /proc for that marker. (Pid files cannot serve: inside a PID namespace a
process's own pid is not the host's.)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

TREE_CHILD = str(Path(__file__).with_name("tree_child.py"))
ESCAPED_CGROUPS = "escaped-cgroups"  # in a pid dir: the cgroups tree_child.py's members made (its own copy)
SETUP_TIMEOUT_S = 30.0  # how long a tree may take to start before the test gives up waiting for it


def mode_problem(mode: str) -> str | None:
    """Why this host cannot contain commands in ``mode`` (None: it can), as grd's guardian found."""
    from grd_blocks.process import keepers

    keeper = keepers.acquire("subreaper")
    keeper.discard()
    guardian = keepers._SUPERVISION.guardian
    assert guardian is not None
    return guardian.unavailable.get(mode)


def marked(marker: str) -> list[int]:
    """Independent of grd: the live processes whose command line contains ``marker``."""
    found = []
    needle = marker.encode()
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0]
        if needle in cmdline and state not in (b"Z", b"X"):
            found.append(int(name))
    return sorted(found)


def term_recording_tree(marker: Path) -> list[str]:
    """A command with a child and a setsid grandchild, all carrying ``marker``; each writes
    ``<marker>.term.<pid>`` when SIGTERM arrives and exits, as a checkpointing job would, and the command
    writes ``<marker>.started`` once its tree is built."""
    return [sys.executable, "-c", _TERM_RECORDING_TREE, str(marker)]


_TERM_RECORDING_TREE = """
import os, signal, sys
def bye(*_):
    open(sys.argv[1] + f".term.{os.getpid()}", "w").close(); os._exit(0)
signal.signal(signal.SIGTERM, bye)
if os.fork() == 0:
    os.setsid()
    os.fork()
open(sys.argv[1] + ".started", "w").close()
while True: signal.pause()
"""


def running(pid: int) -> bool:
    """Independent of grd: does /proc say ``pid`` exists and is not a zombie?"""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    state = data[data.rfind(b")") + 2 :].split()[0]
    return state not in (b"Z", b"X")


def recorded_roles(pid_dir: Path) -> list[str]:
    return sorted(path.stem for path in pid_dir.glob("*.pid"))


def my_zombies() -> list[int]:
    """Zombies whose parent is this process: grd must not leave any (its commands are never its children)."""
    me = str(os.getpid()).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            data = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if fields[0] == b"Z" and fields[1] == me:
            found.append(int(name))
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


def parent(pid: int) -> int | None:
    """``pid``'s parent from /proc (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def ancestors(pid: int) -> list[int]:
    """``pid``'s parent chain up to init, nearest first (read from /proc)."""
    chain = []
    found = parent(pid)
    while found is not None and found > 1:
        chain.append(found)
        found = parent(found)
    return chain
