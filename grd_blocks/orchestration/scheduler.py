"""Run a phase's commands, up to ``max_parallel`` at once, in as many threads, each running one command after
another.

Invariant: before each command starts, the gate is asked whether it may (on_timeout stops, budget expiry,
cancellation); once it says no, every command not yet started gets a SKIPPED (or CANCELLED) row and nothing
more starts. A command's row is recorded (``done``) before the thread that ran it considers the next one, and
the index, the rows, ``reuse``, ``gate`` and ``done`` are taken one thread at a time. Rows come back in spec
order. If the waiting thread is interrupted (Prefect's backstop, Ctrl-C, SIGTERM) or ``reuse``, ``gate`` or
``done`` raised, nothing more starts, ``on_interrupt`` is called (it cancels the run's budget), so every
running command goes down its kill ladder, and the threads are joined before the interruption propagates: no
process outlives the phase. A command's thread goes from its end to the next one's start itself: no hand-off
to the waiting thread and back between two commands.
"""

from __future__ import annotations

import contextvars
import threading
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
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
    with each row as it ends, in a copy of the caller's context, before its thread considers the next command;
    the rows are kept in ``texts`` (the run's, which its progress shares; a store of their own when None).
    """
    # a row is kept as its JSON text in ``texts`` (CommandRows) as soon as it ends, and the commands still to
    # start are an index: nothing per command is held as an object while a long phase runs
    store = RowTexts() if texts is None else texts
    rows = array("q", [-1]) * len(commands)
    lock = threading.Lock()  # the index, the rows, ``reuse``, ``gate`` and ``done``: one command at a time
    following = 0  # index of the next command to consider
    interrupted = False  # the waiting thread was interrupted: nothing more starts
    all_started = threading.Event()  # every thread is the pool's (one started before that does nothing)

    def finish(index: int, row: CommandReport) -> None:
        rows[index] = row.kept_in(store)
        if done is not None:
            done(commands[index], row)

    def take() -> int | None:
        """The index of the next command to start, or None: none left, or the gate said no (every command not
        started then gets its row). Called under ``lock``."""
        nonlocal following
        while following < len(commands) and not interrupted:
            index, command = following, commands[following]
            following += 1
            previous = reuse(command) if reuse is not None else None
            if previous is not None:
                finish(index, previous)
                continue
            skip = gate.skip()
            if skip is None:
                return index
            for unstarted in range(index, len(commands)):
                rows[unstarted] = skipped_row(commands[unstarted].name, skip).kept_in(store)
            following = len(commands)
        return None

    def serve() -> None:
        """One of ``max_parallel`` threads: start the next command, wait for it, record its row, repeat (no
        hand-off to another thread between one command's end and the next one's start). Starts nothing before
        every thread is one the pool will join: an interruption while they start cannot leave one unjoined."""
        all_started.wait()
        while True:
            with lock:
                index = take()
            if index is None:
                return
            try:
                row = contextvars.copy_context().run(start, commands[index])
            except BaseException as error:  # its row says so; the phase goes on
                row = _crashed_row(commands[index].name, error)
            with lock:
                finish(index, row)

    threads = min(max(1, max_parallel), len(commands))
    context = contextvars.copy_context()  # the caller's (its Prefect flow run): each thread runs in a copy
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="grd-command") as pool:
        try:
            servers = [pool.submit(context.copy().run, serve) for _ in range(threads)]
            all_started.set()
            ended, _ = wait(servers, return_when=FIRST_EXCEPTION)
            for server in ended:
                server.result()  # what ``reuse``, ``gate`` or ``done`` raised, raised here
        except BaseException:
            with lock:
                interrupted = True
            all_started.set()
            on_interrupt()
            raise
    missing = sum(1 for number in rows if number < 0)
    if missing:  # every command ends with a row, or the loop raised
        raise RuntimeError(f"{missing} of {len(commands)} commands ended with no row")
    return CommandRows.kept(store, rows)
