"""The worker side of a Dask fan-out: one dispatched command, run on a Dask worker under grd's runner there.

Invariants:

- The deadline travels as seconds left at dispatch (``RemoteRequest.remaining_s``), never as a time: the
  worker's deadline is its own monotonic clock at start plus those seconds, so no clock skew between machines
  can extend it. The dispatcher keeps its own deadline and stops the command when that passes (the stop says
  ``deadline``), so time spent queued on the cluster cannot extend it either: the command is stopped at
  whichever deadline comes first, and both are reported as TIMEOUT.
- The command runs under ``run_attempt`` (a keeper, its containment on this machine, its kill ladder), in
  this worker process: if the worker process dies, grd's guardian and keepers on this machine see its sockets
  close and run the ladder (SIGTERM, the command's grace, SIGKILL), so nothing of the command outlives it.
- Each dispatch is run at most once: the first run claims the dispatch's token (a ``Variable``) before the
  command starts; Dask re-running the task after its worker was lost finds the claim and returns ``Lost``
  without starting anything, so the dispatcher, not Dask, decides whether a lost command runs again, with a
  deadline converted afresh.
- A stop (``RemoteRequest.stop``, a ``Variable`` the dispatcher sets to ``deadline`` or ``cancel: REASON``)
  is watched by one thread while the command runs and turned into the cancel of its budget, so the ladder
  runs within its grace; a stop set before the start means it never starts. The same thread stops the
  command when its task is no longer wanted (the scheduler released it: the driver's client is gone, e.g.
  `grd run` was SIGKILLed, or the driver abandoned the try), within ``STOP_POLL_S`` plus its grace.
- Output lines, the ladder's log lines and a start notice are published on the dispatcher's topic while the
  command runs (``Worker.log_event``; every message is tagged with the token); the whole log, byte for byte,
  comes back in the result (its last ``MAX_LOG_BYTES`` if it is longer, the rest kept on this machine).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distributed import Variable, get_worker
from distributed.worker import thread_state

from grd_blocks.budget import Budget
from grd_blocks.errors import GrdError
from grd_blocks.orchestration.environment import StoreAccess
from grd_blocks.orchestration.execute import CommandPlan, run_attempt
from grd_blocks.process import CommandOutcome
from grd_blocks.spec import WarnSpec

__all__ = ["MAX_LOG_BYTES", "Lost", "NotStarted", "Ran", "RemoteRequest", "run_on_worker"]

MAX_LOG_BYTES = 64 * 1024 * 1024
"""The most of a command's log a result carries back (its tail); a longer log stays whole on the worker."""
STOP_POLL_S = 0.5  # one long poll of the stop variable; the stop itself arrives as soon as it is set
DONE = "done"  # what the worker sets the stop variable to once the command ended (wakes its watcher)
DEADLINE = "deadline"


@dataclass(frozen=True)
class RemoteRequest:
    """One dispatch of a command to a Dask worker: everything it needs, its deadline as seconds left."""

    token: str  # this dispatch's identity: its claim, its stop variable, its messages
    topic: str  # where its output and notices are published
    phase: str
    name: str
    run: str | list[str]
    remaining_s: float | None  # seconds left in its budget at dispatch (None: no deadline)
    level: str  # the level of its budget ("command", "phase", ...)
    configured_s: float | None
    grace_s: float
    run_key: str
    attempt: int
    cwd: Path | None = None
    spec_env: dict[str, str] = field(default_factory=dict)
    store: StoreAccess | None = None
    warn: WarnSpec | None = None

    @property
    def claim(self) -> str:
        return f"grd-claim-{self.token}"

    @property
    def stop(self) -> str:
        return f"grd-stop-{self.token}"


@dataclass(frozen=True)
class Ran:
    """The command ran (or was refused a start by its deadline or a stop): its outcome, as run_command gave
    it, and where."""

    outcome: CommandOutcome
    stop_marked: bool
    host: str
    worker: str
    log: bytes  # the whole log, or its last MAX_LOG_BYTES
    log_kept: str | None  # where the whole log stays on the worker's machine, when it was cut
    lines: int  # output lines published on the topic


@dataclass(frozen=True)
class NotStarted:
    """The command could not start on the worker (a missing executable or cwd, no keeper): why."""

    reason: str
    host: str
    worker: str


@dataclass(frozen=True)
class Lost:
    """Dask ran this dispatch again after the worker that claimed it was lost: nothing was started here."""

    claimed_by: str  # "HOST WORKER" of the lost run


class _Publisher:
    """Publishes a dispatch's messages on its topic, in order, from any thread of this worker."""

    def __init__(self, request: RemoteRequest) -> None:
        self.worker = get_worker()
        self.topic = request.topic
        self.token = request.token
        self.lines = 0

    def send(self, kind: str, **fields: Any) -> None:
        self.worker.log_event(self.topic, {"t": self.token, "k": kind, **fields})

    def line(self, stream: str, text: str) -> None:
        self.lines += 1
        self.send("line", s=stream, l=text)


class _LadderLog(logging.Handler):
    """Forwards the ``grd.process`` records of one command's threads (its ladder steps) to the dispatcher."""

    def __init__(self, publisher: _Publisher, threads: set[int]) -> None:
        super().__init__(logging.INFO)
        self.publisher = publisher
        self.threads = threads

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread in self.threads:
            self.publisher.send("log", level=record.levelno, m=record.getMessage())


GONE = "cancel: its task is no longer wanted (the driver's client left the cluster, or it gave up the try)"
_UNWANTED = frozenset({"cancelled", "released", "forgotten"})


def _task_wanted() -> Callable[[], bool]:
    """Whether the task this thread runs is still wanted by the scheduler (read from the worker's state)."""
    worker, key = get_worker(), getattr(thread_state, "key", None)

    def wanted() -> bool:
        if key is None:  # not run by a worker's executor (nothing to ask)
            return True
        task = worker.state.tasks.get(key)
        return task is not None and task.state not in _UNWANTED

    return wanted


class _StopWatch:
    """Watches the dispatch's stop variable and cancels ``budget`` when the dispatcher sets it, or when the
    task is no longer wanted (``wanted``)."""

    def __init__(self, variable: Variable, budget: Budget, wanted: Callable[[], bool]) -> None:
        self.variable = variable
        self.budget = budget
        self.wanted = wanted
        self.reason: str | None = None
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="grd-dask-stop", daemon=True)

    def check(self) -> None:
        """Read the stop once, now (before the start)."""
        self._read(0)

    def _read(self, timeout: float) -> None:
        try:
            value = self.variable.get(timeout=timeout)
        except TimeoutError:
            return
        except Exception:  # the scheduler went away: the dispatcher's deadline or the guardian still hold
            self.ended.wait(STOP_POLL_S)
            return
        if value != DONE:
            self._stop(str(value))

    def _stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.budget.cancel(f"stopped by grd's dispatcher: {reason}")

    def _watch(self) -> None:
        while not self.ended.is_set() and self.reason is None:
            if not self.wanted():
                self._stop(GONE)
                return
            self._read(STOP_POLL_S)

    def start(self) -> None:
        self.thread.start()

    def end(self) -> None:
        self.ended.set()
        try:
            self.variable.set(DONE)  # wakes the watcher's long poll at once
        except Exception:
            return
        self.thread.join()


def _identity() -> tuple[str, str]:
    return socket.gethostname(), get_worker().address


def _claimed(request: RemoteRequest, host: str, worker: str) -> Lost | None:
    """Claim this dispatch; ``Lost`` when a run before this one did (its worker was lost)."""
    claim = Variable(request.claim)
    try:
        return Lost(str(claim.get(timeout=0)))
    except TimeoutError:
        claim.set(f"{host} {worker}")
        return None


def _local_plan(request: RemoteRequest, budget: Budget, log_path: Path) -> CommandPlan:
    return CommandPlan(
        phase=request.phase, name=request.name, run=request.run, budget=budget, grace_s=request.grace_s,
        configured_s=request.configured_s, run_key=request.run_key, attempt=request.attempt,
        log_path=log_path, cwd=request.cwd, spec_env=request.spec_env, store=request.store, warn=request.warn,
    )


def _read_log(path: Path) -> tuple[bytes, str | None]:
    """The log's bytes (its tail past MAX_LOG_BYTES, the file then kept) and where it is kept, if it is."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            if size > MAX_LOG_BYTES:
                handle.seek(size - MAX_LOG_BYTES)
                return handle.read(), str(path)
            return handle.read(), None
    except FileNotFoundError:
        return b"", None


def run_on_worker(request: RemoteRequest) -> Ran | NotStarted | Lost:
    """Run ``request`` on this Dask worker (called by Dask; module docstring: invariants)."""
    host, worker = _identity()
    lost = _claimed(request, host, worker)
    if lost is not None:
        return lost
    publisher = _Publisher(request)
    label = f"{request.phase}.{request.name}"
    budget = Budget.after(request.remaining_s, name=label, level=request.level)
    watch = _StopWatch(Variable(request.stop), budget, _task_wanted())
    watch.check()
    scratch = Path(tempfile.mkdtemp(prefix="grd-dask-"))
    log_path = scratch / f"{label}.attempt-{request.attempt}.log"
    threads = {threading.get_ident()}
    ladder = _LadderLog(publisher, threads)
    process_log = logging.getLogger("grd.process")
    process_log.addHandler(ladder)
    publisher.send("start", host=host, worker=worker, pid=os.getpid())
    watch.start()
    granted = budget.remaining()
    try:
        try:
            outcome, stop_marked = run_attempt(_local_plan(request, budget, log_path), granted,
                                               on_line=publisher.line)
        except (GrdError, OSError) as exc:
            return NotStarted(str(exc), host, worker)
    finally:
        watch.end()
        process_log.removeHandler(ladder)
    if watch.reason == DEADLINE and outcome.cancelled:  # the dispatcher's deadline came first
        outcome = replace(outcome, cancelled=False, timed_out=True, stopped_by="grd")
    log, kept = _read_log(log_path)
    if kept is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return Ran(outcome, stop_marked, host, worker, log, kept, publisher.lines)
