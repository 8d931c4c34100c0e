"""What the kill ladder needs from a command's containment (``keepers.Keeper`` is the implementation).

Invariant: a ``ProcessTree`` reaches every process the command started, including ones that called ``setsid``,
double-forked or moved to another cgroup, from the moment the command executes until ``close()``; ``kill()``
leaves none of them running; ``live()`` counts what is left by reading /proc, not by trusting the tree's own
bookkeeping.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ProcessTree"]


class ProcessTree(Protocol):
    """A command's process tree, as the runner and the kill ladder drive it."""

    kind: str  # the containment mode: "namespace" | "cgroup" | "subreaper"

    @property
    def main_pid(self) -> int | None:
        """The command's main process (also its session and process group), if known."""
        ...

    def signal(self, signum: int) -> int:
        """Send ``signum`` to every live member; return how many got it."""
        ...

    def kill(self) -> int:
        """SIGKILL every member, including ones forked while this runs; return how many were signalled."""
        ...

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no member to be running; True when the tree is gone."""
        ...

    def live(self) -> set[int]:
        """The pids of the tree's processes still running, found by an independent /proc scan."""
        ...

    def close(self) -> None:
        """Release the containment once the tree is empty."""
        ...
