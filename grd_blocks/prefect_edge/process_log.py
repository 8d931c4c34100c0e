"""The kill ladder in the run's log: ``grd.process`` records of one command, forwarded to its task run logger.

Invariant: while ``process_log_to(logger, label)`` is open, every record the ``grd.process`` logger emits
from the calling thread (the one that runs the command, and so its kill ladder: SIGTERM sent, "ignored
SIGTERM for N s; sending SIGKILL", SIGKILL sent, survivors, leftovers stopped) is re-logged on ``logger``
at its own level as ``label: <message>``; records of other threads (other commands running in parallel)
are left to their own task. The process's own handlers (the worker's console) get exactly the records they
got before (``grd.process`` now creates INFO records, but only those at its former level pass on). The
emitting side is not changed: this only listens.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["PROCESS_LOGGER", "process_log_to"]

PROCESS_LOGGER = "grd.process"


class _Forward(logging.Filter):
    """On ``grd.process``: forwards the records of the threads registered in ``targets``; lets through to
    the logger's own handlers only what its level before grd lowered it would have let through."""

    def __init__(self, passed_level: int) -> None:
        super().__init__()
        self.passed_level = passed_level
        self.targets: dict[int, tuple[logging.Logger | logging.LoggerAdapter[Any], str]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        target = self.targets.get(record.thread or 0)
        if target is not None:
            logger, label = target
            try:
                logger.log(record.levelno, "%s: %s", label, record.getMessage())
            except Exception:  # the run log is telemetry: never let it break the kill ladder
                logging.getLogger(__name__).debug("could not forward a grd.process record", exc_info=True)
        return record.levelno >= self.passed_level


_lock = threading.Lock()
_forward: _Forward | None = None


def _installed() -> _Forward:
    global _forward
    with _lock:
        if _forward is None:
            source = logging.getLogger(PROCESS_LOGGER)
            _forward = _Forward(source.getEffectiveLevel())
            source.addFilter(_forward)
            source.setLevel(min(logging.INFO, source.getEffectiveLevel()))  # INFO steps must be created
        return _forward


@contextlib.contextmanager
def process_log_to(target: logging.Logger | logging.LoggerAdapter[Any], label: str) -> Iterator[None]:
    """Forward this thread's ``grd.process`` records to ``target`` while the block runs."""
    forward = _installed()
    thread = threading.get_ident()
    forward.targets[thread] = (target, label)
    try:
        yield
    finally:
        forward.targets.pop(thread, None)
