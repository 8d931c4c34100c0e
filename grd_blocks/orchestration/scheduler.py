"""Run a phase's commands, up to ``max_parallel`` at once, each in its own thread with its own timer.

Invariant: before each command starts, the gate is asked whether it may (on_timeout stops, budget expiry,
cancellation); once it says no, every command not yet started gets a SKIPPED (or CANCELLED) row and nothing
more starts. Rows come back in spec order. If the waiting thread is interrupted (Prefect's backstop, Ctrl-C,
SIGTERM), ``on_interrupt`` is called (it cancels the run's budget), so every running command goes down its
kill ladder, and the threads are joined before the interruption propagates: no process outlives the phase.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Protocol, TypeVar

from grd_blocks.orchestration.policy import Skip
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CommandReport

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
) -> list[CommandReport]:
    """Run ``commands`` with ``start`` (called in a worker thread with a copy of the caller's context).

    ``reuse`` may return a finished row for a command (resume), which is then not started; ``done`` is called
    in the waiting thread with each row as it ends, before the next command is considered.
    """
    rows: dict[int, CommandReport] = {}
    pending = list(enumerate(commands))
    pending.reverse()
    running: dict[Future[CommandReport], int] = {}

    def finish(index: int, row: CommandReport) -> None:
        rows[index] = row
        if done is not None:
            done(commands[index], row)

    with ThreadPoolExecutor(max_workers=max(1, max_parallel), thread_name_prefix="grd-command") as pool:
        try:
            while pending or running:
                while pending and len(running) < max(1, max_parallel):
                    index, command = pending[-1]
                    previous = reuse(command) if reuse is not None else None
                    if previous is not None:
                        pending.pop()
                        finish(index, previous)
                        continue
                    skip = gate.skip()
                    if skip is not None:
                        for index, command in reversed(pending):
                            rows[index] = skipped_row(command.name, skip)
                        pending.clear()
                        break
                    pending.pop()
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
    return [rows[i] for i in range(len(commands))]
