"""Statuses of commands, phases and benchmarks, how they roll up, and the exit code they map to.

Invariant: TIMEOUT is never reported as FAILED. A phase or benchmark is FAILED if anything in it failed, else
TIMEOUT if anything timed out (or its own budget expired while work was left), else CANCELLED if anything was
cancelled, else COMPLETED; a node where everything was skipped is SKIPPED. Exit codes: 0 completed (or
skipped), 1 failed or cancelled, 124 timed out and nothing failed; 2 is reserved for a bad spec or usage; a
run stopped by a signal exits 128 + its number, as a shell reports it: 130 for Ctrl-C (SIGINT), 143 for
SIGTERM (``interrupt_exit_code``). Every exit code grd uses is decided in this module: a run's from its status
(``exit_code``) or the signal that stopped it, an error's (every `grd` subcommand) by ``exit_code_for``: 2
when the input is wrong and the user fixes it (a spec, a flag, a run key, a block field, a duration, a
checkpoint that does not exist: every ``ValueError`` grd raises, and ``CheckpointNotFound``); 1 when the work
or the store failed (an unreachable or failing store, a damaged checkpoint, a refused approval: any other
``GrdError``); 130 for Ctrl-C; None for anything else (a bug).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from grd_blocks.errors import CheckpointNotFound, GrdError, StoreUnavailable


class Status(StrEnum):
    """The outcome of one command, phase or benchmark."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

_PRECEDENCE = (Status.FAILED, Status.TIMEOUT, Status.CANCELLED, Status.COMPLETED)


def rollup(statuses: Iterable[Status], *, budget_expired: bool = False) -> Status:
    """The status of a node from its children's.

    ``budget_expired`` says the node's own budget ran out while work was left (skipped or killed), which makes
    it at least TIMEOUT. An empty node is COMPLETED; one whose children were all skipped is SKIPPED.
    """
    seen = set(statuses)
    if budget_expired:
        seen.add(Status.TIMEOUT)
    for status in _PRECEDENCE:
        if status in seen:
            return status
    return Status.SKIPPED if seen else Status.COMPLETED


def interrupt_exit_code(exc: BaseException) -> int | None:
    """128 + the signal that stopped a run, from what it raised: ``KeyboardInterrupt`` (SIGINT) is 130, an
    external-signal exception carrying ``signal`` (Prefect's ``TerminationSignal``: SIGTERM) 128 + it; None
    for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGINT
    number = getattr(exc, "signal", None)
    if not isinstance(exc, Exception) and isinstance(number, int) and not isinstance(number, bool):
        return 128 + number
    return None


def exit_code(status: Status) -> int:
    """The process exit code `grd run` returns for a benchmark that ended in ``status``."""
    if status is Status.TIMEOUT:
        return EXIT_TIMEOUT
    if status in (Status.FAILED, Status.CANCELLED):
        return EXIT_FAILED
    return EXIT_OK


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code ``exc`` ends a subcommand with; None for an error that is not the user's or the store's
    (a bug: let it raise)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGINT
    if isinstance(exc, StoreUnavailable):  # an OSError, never a ValueError: checked first all the same
        return EXIT_FAILED
    if isinstance(exc, ValueError | CheckpointNotFound):
        return EXIT_USAGE
    if isinstance(exc, GrdError):
        return EXIT_FAILED
    return None
