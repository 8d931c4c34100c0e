"""The containment of one command's process tree, and the choice between its two implementations.

Invariant: a ``ProcessTree`` knows every process the command started, including ones that called ``setsid`` or
double-forked, from the moment the command executes until ``close()``; ``kill()`` leaves none of them running.
Two implementations: ``CgroupTree`` (a cgroup v2 per command: membership is exact and ``cgroup.kill`` atomic)
where a writable cgroup2 hierarchy exists, else ``SweepTree`` (child subreaper + a /proc sweep by parent,
session and an environment token). ``GRD_FORCE_FALLBACK=1`` forces the sweep (tests run both).
"""

from __future__ import annotations

import os
from typing import Protocol

__all__ = ["FORCE_FALLBACK_ENV", "ProcessTree", "fallback_forced", "open_tree"]

FORCE_FALLBACK_ENV = "GRD_FORCE_FALLBACK"


class ProcessTree(Protocol):
    """What the runner and the kill ladder need from a containment."""

    kind: str  # "cgroup" | "subreaper"

    def prepare(self, argv: list[str], *, shell: bool, env: dict[str, str]) -> list[str]:
        """Return the argv to execute so the command starts inside the tree; may add to ``env`` (a copy)."""
        ...

    def attach(self, pid: int) -> None:
        """Record the command's main pid (its session id too: it is started with ``start_new_session``)."""
        ...

    def main_exited(self) -> None:
        """The main process has exited (it is not reaped until ``close``): no need to look at it again."""
        ...

    def live(self) -> set[int]:
        """The pids of the tree's processes that are still running (zombies excluded, reaped where ours)."""
        ...

    def signal(self, signum: int) -> int:
        """Send ``signum`` to every live member, repeating until no new member appears; return how many."""
        ...

    def kill(self) -> int:
        """SIGKILL every member, including ones forked while this runs; return how many were signalled."""
        ...

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no member to be running; True when the tree is gone."""
        ...

    def close(self) -> None:
        """Release the containment (remove the cgroup, reap zombies). Call once the tree is empty."""
        ...


def fallback_forced() -> bool:
    """True when ``GRD_FORCE_FALLBACK`` asks for the subreaper sweep."""
    return os.environ.get(FORCE_FALLBACK_ENV, "") not in ("", "0")


def open_tree(token: str) -> ProcessTree:
    """A cgroup for the command where one can be made, else the subreaper sweep (``token`` marks its env)."""
    from grd_blocks.process.cgroup import CgroupTree
    from grd_blocks.process.sweep import SweepTree

    if fallback_forced():
        return SweepTree(token)
    tree = CgroupTree.create()
    if tree is not None:
        return tree
    return SweepTree(token)
