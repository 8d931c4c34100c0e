"""Run a phase's commands, up to ``max_parallel`` at once, each in its own thread with its own timer.

Invariant: before each command starts, the gate is asked whether it may (on_timeout stops, budget expiry,
cancellation); once it says no, every command not yet started gets a SKIPPED (or CANCELLED) row and nothing
more starts. Rows come back in spec order. If the waiting thread is interrupted (Prefect's backstop, Ctrl-C,
SIGTERM), ``on_interrupt`` is called (it cancels the run's budget), so every running command goes down its
kill ladder, and the threads are joined before the interruption propagates: no process outlives the phase.
"""

from __future__ import annotations

import contextvars
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Protocol, TypeVar

from grd_blocks.orchestration.policy import Skip
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CommandReport, CommandRows
from grd_blocks.row_texts import RowTexts

__all__ = ["Gate", "run_commands", "skipped_row"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


class Gate(Protocol):
    """Says whether the next command may start (``PhaseGate`` is one)."""

    def skip(self) -> Skip | None: ...


def skipped_row(name: str, skip: Skip) -> CommandReport:
    """The row of a command that never started."""
    return CommandReport(name=name, status=skip.status, reason=skip.reason)


def _crashed_row(name: str, exc: BaseException) -> CommandReport:
    reason = f"grd could not run it: {type(exc).__name__}: {exc}"
    return CommandReport(name=name, status=Status.FAILED, reason=reason)


def run_commands(
    commands: Sequence[T],
    *,
    start: Callable[[T], CommandReport],
    gate: Gate,
    on_interrupt: Callable[[], None],
    max_parallel: int = 1,
    reuse: Callable[[T], CommandReport | None] | None = None,
    done: Callable[[T, CommandReport], None] | None = None,
    texts: RowTexts | None = None,
) -> CommandRows:
    """Run ``commands`` with ``start`` (called in a worker thread with a copy of the caller's context).

    ``reuse`` may return a finished row for a command (resume), which is then not started; ``done`` is called
    in the waiting thread with each row as it ends, before the next command is considered; the rows are kept
    in ``texts`` (the run's, which its progress shares; a store of their own when None).
    """
    # a row is kept as its JSON text in ``texts`` (CommandRows) as soon as it ends, and the commands still to
    # start are an index: nothing per command is held as an object while a long phase runs
    store = RowTexts() if texts is None else texts
    rows = array("q", [-1]) * len(commands)
    parallel = max(1, max_parallel)
    following = 0  # index of the next command to consider
    running: dict[Future[CommandReport], int] = {}

    def finish(index: int, row: CommandReport) -> None:
        rows[index] = row.kept_in(store)
        if done is not None:
            done(commands[index], row)

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="grd-command") as pool:
        try:
            while following < len(commands) or running:
                while following < len(commands) and len(running) < parallel:
                    index, command = following, commands[following]
                    previous = reuse(command) if reuse is not None else None
                    if previous is not None:
                        following += 1
                        finish(index, previous)
                        continue
                    skip = gate.skip()
                    if skip is not None:
                        for index in range(following, len(commands)):
                            rows[index] = skipped_row(commands[index].name, skip).kept_in(store)
                        following = len(commands)
                        break
                    following += 1
                    context = contextvars.copy_context()
                    running[pool.submit(context.run, start, command)] = index
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = running.pop(future)
                    error = future.exception()
                    row = future.result() if error is None else _crashed_row(commands[index].name, error)
                    finish(index, row)
        except BaseException:
            on_interrupt()
            raise
    missing = sum(1 for number in rows if number < 0)
    if missing:  # every command ends with a row, or the loop raised
        raise RuntimeError(f"{missing} of {len(commands)} commands ended with no row")
    return CommandRows.kept(store, rows)
