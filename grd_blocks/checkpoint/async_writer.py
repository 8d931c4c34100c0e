"""Background checkpoint writes: at most one in flight per run, failures surface on the next call.

Invariant: ``submit`` first waits for the previous job (so writes commit in submission order and at most one
is in flight) and re-raises its failure; ``wait`` does the same. Every live writer is flushed at interpreter
exit, so a process that exits normally never drops a checkpoint it already handed over. The flush runs among
threading's exit hooks, before ``concurrent.futures`` stops accepting work (a plain ``atexit`` hook runs after
that, when a write could no longer hash or send its pieces on the process's thread pools).
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook is registered before ours, so ours runs first
import logging
import threading
import weakref
from collections.abc import Callable

logger = logging.getLogger("grd.checkpoint")

_LIVE: weakref.WeakSet[AsyncWriter] = weakref.WeakSet()


class AsyncWriter:
    """Runs one job at a time in a daemon thread; remembers its failure until ``wait`` raises it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._what = ""
        _LIVE.add(self)

    @property
    def in_flight(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def submit(self, job: Callable[[], object], *, what: str) -> None:
        """Wait for (and raise the failure of) the previous job, then start ``job`` in the background."""
        with self._lock:
            self._wait_locked()
            self._what = what
            thread = threading.Thread(
                target=self._run, args=(job,), name=f"grd-ckpt-{self.name}", daemon=True
            )
            self._thread = thread
            thread.start()

    def wait(self) -> None:
        """Block until no job is in flight; raise the failure of the last job, if any (once)."""
        with self._lock:
            self._wait_locked()

    def _wait_locked(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            error.add_note(f"raised by the background save of {self._what} in {self.name}")
            raise error

    def _run(self, job: Callable[[], object]) -> None:
        try:
            job()
        except BaseException as exc:
            self._error = exc


def _flush_all() -> None:
    for writer in list(_LIVE):
        try:
            writer.wait()
        except BaseException:
            logger.exception("background checkpoint write for %s failed before exit", writer.name)


_register_before_pools_stop = getattr(threading, "_register_atexit", None)  # what concurrent.futures uses
if _register_before_pools_stop is not None:
    _register_before_pools_stop(_flush_all)  # threading runs these in reverse order of registration
else:  # pragma: no cover - CPython has had it since 3.9
    atexit.register(_flush_all)
