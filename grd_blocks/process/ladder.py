"""The kill ladder: SIGTERM to the whole tree, up to ``grace_s`` for it to exit, then SIGKILL to what is left.

Invariant: when ``stop_tree`` returns, every process of the tree has been signalled and ``survivors`` counts
the ones an independent /proc scan (``tree.live()``) still finds running after SIGKILL and a bounded wait
(``KILL_WAIT_S``); it is 0 unless a process is stuck in the kernel, and a non-zero count is an ERROR naming
each survivor's pid and command line. ``grace_s == 0`` skips SIGTERM. Each step is logged on the
``grd.process`` logger.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from grd_blocks.process import procfs
from grd_blocks.process.tree import ProcessTree

__all__ = ["KILL_WAIT_S", "LadderResult", "stop_tree"]

log = logging.getLogger("grd.process")

KILL_WAIT_S = 5.0  # how long SIGKILLed processes get to disappear before they count as survivors


@dataclass(frozen=True)
class LadderResult:
    """When each signal was sent (seconds after the command started) and how many processes survived."""

    term_sent_s: float | None
    kill_sent_s: float | None
    survivors: int


def stop_tree(
    tree: ProcessTree,
    *,
    grace_s: float,
    why: str,
    label: str,
    clock: Callable[[], float],
    started: float,
) -> LadderResult:
    """Run the ladder on ``tree``; ``why`` says what triggered it and ``label`` names the command in logs."""
    term_sent: float | None = None
    kill_sent: float | None = None
    pgid = tree_pgid(tree)
    gone = False
    if grace_s > 0:
        count = tree.signal(signal.SIGTERM)
        term_sent = clock() - started
        log.info(
            "%s: %s; sent SIGTERM to %d process(es) of pgid %s (%s), SIGKILL in %.1fs",
            label,
            why,
            count,
            pgid,
            tree.kind,
            grace_s,
        )
        gone = tree.wait_empty(grace_s)
        if not gone:
            left = sorted(tree.live())
            if left:
                log.warning(
                    "%s: pgid %s ignored SIGTERM for %.1fs; sending SIGKILL to %d process(es) (pids %s)",
                    label,
                    pgid,
                    grace_s,
                    len(left),
                    _pids(left),
                )
            gone = not left
    if not gone:
        count = tree.kill()
        kill_sent = clock() - started
        if grace_s <= 0:
            log.info(
                "%s: %s; sent SIGKILL to %d process(es) of pgid %s (%s, grace 0)",
                label,
                why,
                count,
                pgid,
                tree.kind,
            )
        tree.wait_empty(KILL_WAIT_S)
    left = sorted(tree.live())  # counted by reading /proc, whatever the tree itself reported
    if left:
        log.error(
            "%s: %d process(es) survived SIGKILL for %.1fs: %s; stuck in the kernel (state D?)",
            label,
            len(left),
            KILL_WAIT_S,
            "; ".join(f"pid {pid} ({procfs.cmdline(pid, 80) or '?'})" for pid in left[:10]),
        )
    return LadderResult(term_sent_s=term_sent, kill_sent_s=kill_sent, survivors=len(left))


def tree_pgid(tree: ProcessTree) -> str:
    """The main pid, which is also the process group and session id (the child starts a new session)."""
    main = tree.main_pid
    return str(main) if main is not None else "?"


def _pids(pids: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(p) for p in pids[:limit])
    return shown + (f", ... ({len(pids) - limit} more)" if len(pids) > limit else "")
