"""Background checkpoint writes: one writing, one waiting, a newer save supersedes the waiting one.

Invariants:

* Jobs run one at a time, in submission order, on the writer's own thread: at most one write is in flight.
* ``submit`` never waits for the write in flight: the new job waits its turn. If another job was already
  waiting (it never started), the new one takes its place and the old one's ``dropped`` callback runs in the
  caller's thread; so a loop that saves faster than the store writes is blocked only while it stages its
  state, its newest state is always the next written, and memory holds at most two staged states.
* A job's failure surfaces once, on the next ``submit`` or ``wait`` (a ``submit`` that raises queues
  nothing). A job already waiting when the one before it failed still runs.
* Every live writer is flushed at interpreter exit, so a process that exits normally never drops a checkpoint
  it already handed over and nothing superseded it. The flush runs among threading's exit hooks, before
  ``concurrent.futures`` stops accepting work (a plain ``atexit`` hook runs after that, when a write could no
  longer hash or send its pieces on the process's thread pools).
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook is registered before ours, so ours runs first
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("grd.checkpoint")

_LIVE: weakref.WeakSet[AsyncWriter] = weakref.WeakSet()


@dataclass(frozen=True)
class _Job:
    run: Callable[[], object]
    what: str
    dropped: Callable[[], None]


class AsyncWriter:
    """Runs jobs one at a time on a daemon thread of its own; remembers a failure until it is raised."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._changed = threading.Condition()
        self._running: _Job | None = None
        self._waiting: _Job | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._failed_what = ""
        self.superseded: list[str] = []
        """What was submitted and never written because a newer job took its place, oldest first."""
        _LIVE.add(self)

    @property
    def in_flight(self) -> bool:
        """Whether a job is running or waiting."""
        with self._changed:
            return self._running is not None or self._waiting is not None

    def submit(
        self, job: Callable[[], object], *, what: str, dropped: Callable[[], None] = lambda: None
    ) -> None:
        """Queue ``job`` behind the one in flight (raising a finished job's failure first, then queueing
        nothing); a job still waiting is dropped for it (``dropped`` of that job is called)."""
        new = _Job(job, what, dropped)
        with self._changed:
            self._raise_failure_locked()
            old, self._waiting = self._waiting, new
            if old is not None:
                self.superseded.append(old.what)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"grd-ckpt-{self.name}", daemon=True)
                self._thread.start()
        if old is not None:
            self._report_superseded(old, new)
            old.dropped()

    def wait(self) -> None:
        """Block until no job runs or waits; raise the failure of a job, if any (once)."""
        with self._changed:
            self._changed.wait_for(lambda: self._running is None and self._waiting is None)
            self._raise_failure_locked()

    def _raise_failure_locked(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            error.add_note(f"raised by the background save of {self._failed_what} in {self.name}")
            raise error

    def _work(self) -> None:
        while True:
            with self._changed:
                job, self._waiting = self._waiting, None
                self._running = job
                if job is None:
                    self._thread = None
                    self._changed.notify_all()
                    return
            try:
                job.run()
            except BaseException as exc:
                with self._changed:
                    if self._error is None:  # the first failure is the one reported
                        self._error, self._failed_what = exc, job.what
            with self._changed:
                self._running = None
                self._changed.notify_all()

    def _report_superseded(self, old: _Job, new: _Job | None) -> None:
        if len(self.superseded) == 1:  # once per writer: a fast loop would otherwise log every save
            by = f"by {new.what} " if new is not None else ""
            logger.info(
                "%s in %s was not written: superseded %sbefore its write could start (saves come faster "
                "than the store takes them; the newest state is always the next written, and later ones "
                "are not logged: see RunCheckpoints.superseded)", old.what, self.name, by,
            )


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
