"""Background checkpoint writes: one writing, one waiting, a newer save supersedes the waiting one.

Invariants:

* Jobs run one at a time, in submission order, on the writer's own thread: at most one write is in flight.
* ``submit`` never waits for the write in flight: the new job waits its turn. If another job was already
  waiting (it never started), the new one takes its place and the old one's ``dropped`` callback runs in the
  caller's thread; so a loop that saves faster than the store writes is blocked only while it stages its
  state, its newest state is always the next written, and memory holds at most two staged states.
* A job's failure surfaces once, on the next ``submit`` or ``wait`` (a ``submit`` that raises queues
  nothing). A job already waiting when the one before it failed still runs.
* ``ShardedWriter`` (``save_sharded_async``, sharded.py) runs jobs that are collectives: every rank must run
  the same jobs in the same order. Calls are numbered (the same numbers on every rank, since every rank makes
  the same calls; a call that raises still takes its number); when its thread is free, each rank claims the
  newest job it has staged, the ranks gather their claims over the writer's own process group and all run
  the newest of them (a rank that has not staged it yet waits for its own call). Jobs older than the agreed
  one never run (superseded), so at most three staged states are held per rank. A failure of a job (agreed
  on every rank by the job itself) drops what the rank has staged and is raised by its next ``number``,
  ``submit`` or ``wait``, once; ``wait`` issues no collective.
* The writer's thread runs at a lower CPU priority than the loop (``WRITER_NICE`` above the process's, this
  thread only, and the threads it starts: serializing, DCP's): where the loop and a write compete for cores,
  the loop's staging copy gets them first and the write uses what the loop leaves
  (``GRD_CHECKPOINT_WRITER_NICE`` sets the step, 0 keeps the loop's priority).
* Every live writer is flushed at interpreter exit, so a process that exits normally never drops a checkpoint
  it already handed over and nothing superseded it. The flush runs among threading's exit hooks, before
  ``concurrent.futures`` stops accepting work (a plain ``atexit`` hook runs after that, when a write could no
  longer hash or send its pieces on the process's thread pools).
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook is registered before ours, so ours runs first
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grd_blocks.checkpoint.payload.snapshot import SnapshotBuffers

logger = logging.getLogger("grd.checkpoint")

WRITER_NICE = 10
"""How much lower the writer thread's priority is than the process's (nice steps, capped at 19)."""


def _lower_priority() -> None:
    """Lower this thread's CPU priority by ``WRITER_NICE`` (``GRD_CHECKPOINT_WRITER_NICE``): on Linux a
    thread's nice value is its own (``setpriority`` on its thread id) and threads it starts inherit it.
    Best effort: where that is not possible the writer keeps the loop's priority."""
    try:
        step = int(os.environ.get("GRD_CHECKPOINT_WRITER_NICE", WRITER_NICE))
        if step <= 0:
            return
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except (OSError, ValueError, AttributeError):
        return

_LIVE: weakref.WeakSet[AsyncWriter | ShardedWriter] = weakref.WeakSet()


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
        _lower_priority()
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


@dataclass(frozen=True)
class _NumberedJob:
    number: int
    what: str
    run: Callable[[Any], object]
    """Called with the writer's process group, on the writer's thread."""
    release: Callable[[], None]
    """Gives the staged state's buffers back (once it is written, dropped or failed)."""


class ShardedWriter:
    """Runs numbered collective jobs (sharded saves) one at a time on a thread of its own, the same job on
    every rank: the newest any rank has staged when the ranks gather their claims (module docstring)."""

    def __init__(self, name: str, gather: Callable[[int, Any], list[int]]) -> None:
        self.name = name
        self.group: Any = None
        """The checkpoint process group (``ensure_group``); None without torch.distributed."""
        self.buffers = SnapshotBuffers()
        self._gather = gather
        self._changed = threading.Condition()
        self._calls = 0
        self._staged: dict[int, _NumberedJob] = {}
        self._wanted: int | None = None
        self._busy = False
        self._gathering = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._failed_what = ""
        self.superseded: list[str] = []
        """Saves staged and never written, because the ranks agreed on a newer one (oldest first)."""
        _LIVE.add(self)

    def ensure_group(self) -> None:
        """Create the checkpoint process group (every rank, the first time: a collective on the default
        group, in the caller's thread)."""
        import torch.distributed as dist

        if self.group is None and dist.is_available() and dist.is_initialized():
            self.group = dist.new_group(backend="gloo")

    def number(self) -> int:
        """Number the next call (counted whether it then stages or raises, so the numbers stay the same on
        every rank); a failure not raised yet is raised here."""
        with self._changed:
            self._calls += 1
            self._raise_failure_locked()
            return self._calls

    def submit(
        self, number: int, what: str, job: Callable[[Any], object], release: Callable[[], None]
    ) -> None:
        """Stage call ``number`` (from ``number()``); staged saves it supersedes are dropped now. A save that
        failed since ``number()`` is raised instead (this one is dropped)."""
        new = _NumberedJob(number, what, job, release)
        with self._changed:
            if self._error is not None:
                release()
                self._raise_failure_locked()
            gone = [] if self._gathering else [  # while the ranks gather, any staged call may be agreed
                self._staged.pop(n) for n in sorted(self._staged) if n != self._wanted]
            self._staged[number] = new
            self._changed.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"grd-sharded-{self.name}",
                                                daemon=True)
                self._thread.start()
        self._supersede(gone)

    def wait(self) -> None:
        """Block until this rank's thread has nothing staged or running; raise a failure, if any (once)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._busy and not self._staged)
            self._raise_failure_locked()

    def _raise_failure_locked(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            error.add_note(f"raised by the background sharded save of {self._failed_what} in {self.name}")
            raise error

    def _supersede(self, jobs: list[_NumberedJob]) -> None:
        for job in jobs:
            self.superseded.append(job.what)
            job.release()
        if jobs and len(self.superseded) == len(jobs):  # once per writer: a fast loop would log every save
            logger.info("%s in %s was not written: the ranks agreed on a newer save before its write could "
                        "start (saves come faster than the store takes them; later ones are not logged: see "
                        "RunCheckpoints.superseded)", jobs[0].what, self.name)

    def _work(self) -> None:
        _lower_priority()
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._staged))
                claimed = self._staged.pop(max(self._staged))
                self._busy = self._gathering = True
            job: _NumberedJob | None = claimed
            older: list[_NumberedJob] = []
            try:
                agreed = max(self._gather(claimed.number, self.group))
                with self._changed:
                    self._gathering = False
                    older = [self._staged.pop(n) for n in sorted(self._staged) if n < agreed]
                    if agreed != claimed.number:  # another rank has staged a newer call: write that one
                        job = None
                        self._wanted = agreed
                        self._changed.wait_for(functools.partial(self._staged.__contains__, agreed))
                        job = self._staged.pop(agreed)
                        older += [self._staged.pop(n) for n in sorted(self._staged) if n < agreed]
                        self._wanted = None
                        older.insert(0, claimed)
                self._supersede(older)
                assert job is not None
                job.run(self.group)
            except BaseException as exc:
                with self._changed:
                    self._wanted, self._gathering = None, False
                    gone = list(self._staged.values())
                    self._staged.clear()
                    if self._error is None:  # the first failure is the one reported
                        self._error = exc
                        self._failed_what = job.what if job is not None else claimed.what
                for each in gone:
                    each.release()
            finally:
                if job is not None:
                    job.release()  # written or failed: its buffers serve a later save
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()


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
