"""Leaving a training process quickly once its checkpoint is committed.

Invariant: ``exit_now(code)`` runs the process's ``atexit`` callbacks (so trackers such as MLflow or W&B still
close their runs, and multiprocessing reaps its workers), flushes stdout and stderr, then ends the process
with ``code`` without the interpreter's module teardown, which takes seconds once torch is imported (see
bench/results/training_stop.json). Non-daemon threads are not waited for: call it once the work that matters
(the checkpoint) is done. ``install_excepthook()`` makes an uncaught ``TrainingInterrupted`` one line on
stderr and such an exit with its code (124 deadline, 143 SIGTERM, 130 SIGINT), so a script need not catch it;
its checkpoint is committed, so from then on SIGTERM and SIGINT are ignored (a framework's teardown may have
put the default handlers back) and cannot turn that exit into -15. ``note_stop(error)`` records the stop a
training loop is about to raise (the loops and integrations call it once the stop's checkpoint is committed;
the hook calls it too), so code that runs at exit (a tracker closing its run) can say why the process ends:
``last_stop()``. Leaving with 124 (stopped for its budget) first creates ``GRD_TIMEOUT_FILE``
(``budget/stop_file.py``), so grd still reports TIMEOUT when a launcher such as torchrun turns the 124 into 1.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from types import TracebackType

from grd_blocks.budget.stop_file import mark_budget_stop
from grd_blocks.errors import TrainingInterrupted

__all__ = ["EXIT_BUDGET_STOP", "exit_now", "install_excepthook", "last_stop", "note_stop"]

EXIT_BUDGET_STOP = TrainingInterrupted.EXIT_CODES["deadline"]  # 124

_stop: TrainingInterrupted | None = None


def note_stop(error: TrainingInterrupted) -> TrainingInterrupted:
    """Record ``error`` as this process's training stop (the newest one wins); returns it."""
    global _stop
    _stop = error
    return error


def last_stop() -> TrainingInterrupted | None:
    """The stop ``note_stop`` recorded in this process, None while training ran to its end (or never ran)."""
    return _stop


def exit_now(code: int) -> None:
    """End the process with ``code`` at once (after atexit callbacks and flushing stdout/stderr); 124 (stopped
    for its budget) also creates ``GRD_TIMEOUT_FILE`` under grd, whatever a launcher makes of the 124."""
    if code == EXIT_BUDGET_STOP:
        mark_budget_stop()
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if isinstance(value, TrainingInterrupted):
        note_stop(value)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                signal.signal(sig, signal.SIG_IGN)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"grd: {value}\n")
        exit_now(value.exit_code)
    _previous(kind, value, tb)


_previous = sys.excepthook


def install_excepthook() -> None:
    """Route an uncaught ``TrainingInterrupted`` to ``exit_now(exc.exit_code)``; others to the hook before."""
    global _previous
    if sys.excepthook is not _hook:
        _previous = sys.excepthook
        sys.excepthook = _hook
