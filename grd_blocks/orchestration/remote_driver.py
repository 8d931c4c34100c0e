"""The engine-neutral driver side of a fan-out: one command plan, dispatched try by try to a cluster, reported
as if it had run here. Each engine (``dask_dispatch``, ``ray_dispatch``) binds only its transport: how a try
is submitted, how its messages, stop and result travel (``RemoteDriver``'s abstract methods).

Invariants:

- A command's deadline stays the driver's: each try sends the seconds left in its budget at that moment
  (``remote_request``; the worker adds them to its own clock), and the driver stops the try when its own
  deadline passes; a cancel of the budget (a phase's ``on_timeout`` stop, the run stopped by a cancel, a
  signal or Ctrl-C) stops it too. The stop is sent once (``deadline`` or ``cancel: REASON``); a try that does
  not answer ``ANSWER_S`` past its grace and the ladder's wait after its stop is cancelled and abandoned.
- A try whose worker is lost (the engine re-ran the task and it found its claim, the engine reports the task
  lost, or the transport broke before the task ended: one that ended is read, its answer carrying its whole
  log) is run again, as a new dispatch with the budget's seconds left then, at most
  ``attempts`` tries in all and only while the budget has time, is not cancelled and the cluster still
  answers; the row's ``note`` names every lost try (host, worker, how long it ran). Nothing of a lost try
  runs on: its worker's guardian stopped it. No try answered: the row is CANCELLED (budget cancelled),
  TIMEOUT (no time left) or FAILED, its reason naming every lost try and why none more was made.
- The row is ``outcome_row`` of the driver's plan and the worker's outcome, exactly as a local run's, plus
  ``host`` and ``worker``. The log at ``plan.log_path`` grows with the output as it streams in; once a try
  answers, that try's part is replaced by the worker's log, byte for byte (a lost try keeps what streamed,
  followed by one line saying it was lost).
- Output lines reach ``on_line`` in the calling thread, in order, while the command runs; the worker's
  ``grd.process`` lines (its ladder) are logged to this process's ``grd.process`` logger.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from grd_blocks.orchestration.execute import CommandPlan, LineSink, not_started, outcome_row
from grd_blocks.orchestration.remote import DEADLINE, Lost, NotStarted, Ran, RemoteRequest
from grd_blocks.orchestration.status import Status
from grd_blocks.process.ladder import KILL_WAIT_S
from grd_blocks.report import CommandReport

__all__ = ["ANSWER_S", "STREAM_DRAIN_S", "TICK_S", "DriverLog", "RemoteDriver", "TryView", "joined",
           "remote_request"]

process_log = logging.getLogger("grd.process")

ANSWER_S = 30.0  # how long past a stop plus its grace a try may take to answer before it is abandoned
TICK_S = 0.05  # the longest a wait for output lasts before the driver checks its budget and the task
STREAM_DRAIN_S = 5.0  # how long a finished try's last lines may trail its result


class DriverLog:
    """The driver's copy of a command's log: streamed lines as they come, then a try's exact bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("wb")
        self.try_start = 0

    def append_line(self, text: str) -> None:
        self.handle.write(text.encode("utf-8", "replace") + b"\n")
        self.handle.flush()

    def begin_try(self) -> None:
        self.try_start = self.handle.tell()

    def replace_try(self, data: bytes) -> None:
        self.handle.seek(self.try_start)
        self.handle.truncate()
        self.handle.write(data)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def joined(parts: list[str]) -> str | None:
    return "; ".join(parts) if parts else None


def remote_request(plan: CommandPlan, topic: str) -> RemoteRequest:
    """The dispatch of ``plan`` now: its deadline converted to the seconds left in its budget."""
    remaining = plan.budget.remaining()
    if plan.budget.cancelled:
        remaining = 0.0
    return RemoteRequest(
        token=uuid.uuid4().hex, topic=topic, phase=plan.phase, name=plan.name, run=plan.run,
        remaining_s=None if math.isinf(remaining) else remaining, level=plan.budget.level,
        configured_s=plan.configured_s, grace_s=plan.grace_s, run_key=plan.run_key, attempt=plan.attempt,
        cwd=plan.cwd, spec_env=dict(plan.spec_env), store=plan.store, warn=plan.warn,
    )


class Target(Protocol):
    """What an engine's target says about tries (``DaskTarget``, ``RayTarget``)."""

    @property
    def attempts(self) -> int: ...


@dataclass
class TryView:
    """What the waiting thread saw of one try, and where its messages go."""

    plan: CommandPlan
    on_line: LineSink | None
    log: DriverLog
    kind: str  # what the engine's worker is called in messages ("Dask worker", "Ray node")
    host: str | None = None
    worker: str | None = None
    started_at: float | None = None
    stop_sent_at: float | None = None
    lines: int = 0

    @property
    def where(self) -> str:
        return f"{self.host or '?'} ({self.kind} {self.worker or '?'})"

    def ran_for(self) -> str:
        return "" if self.started_at is None else f" after {time.monotonic() - self.started_at:.1f}s"

    def take(self, messages: Iterable[dict[str, Any]]) -> None:
        """Hand a try's messages on: lines to the log and ``on_line``, ladder lines to ``grd.process``."""
        for message in messages:
            kind = message.get("k")
            if kind == "line":
                self.lines += 1
                text = str(message.get("l", ""))
                self.log.append_line(text)
                if self.on_line is not None:
                    self.on_line(str(message.get("s", "stdout")), text)
            elif kind == "log":
                process_log.log(int(message.get("level", logging.INFO)), "%s (on %s)", message.get("m"),
                                self.host)
            elif kind == "start":
                self.host, self.worker = str(message.get("host")), str(message.get("worker"))
                self.started_at = time.monotonic()
                # the run's log prefixes grd.process lines with the command's label (process_log.py)
                process_log.info("running on %s (%s %s, pid %s)", self.host, self.kind, self.worker,
                                 message.get("pid"))


H = TypeVar("H")  # an engine's handle on one submitted try


class RemoteDriver(ABC, Generic[H]):
    """Runs command plans on one cluster (module docstring: invariants); an engine binds the transport."""

    engine: ClassVar[str]  # "Dask", "Ray"
    kind: ClassVar[str]  # what its worker is called: "Dask worker", "Ray node"
    topic: str  # where a try's messages are published (the engine's meaning)

    # --- the transport ------------------------------------------------------------------------------------

    @abstractmethod
    def target(self, plan: CommandPlan) -> Target:
        """``plan``'s target on this engine."""

    @abstractmethod
    def submit(self, plan: CommandPlan, request: RemoteRequest) -> H:
        """Submit one try; raise when the cluster takes none."""

    @abstractmethod
    def done(self, handle: H) -> bool:
        """Whether the try's task has ended (its result can be read without waiting)."""

    @abstractmethod
    def take(self, request: RemoteRequest, handle: H, wait_s: float) -> list[dict[str, Any]] | str:
        """The try's messages so far, waiting at most ``wait_s`` for one; a string when the try is lost
        (the transport broke: why)."""

    @abstractmethod
    def send_stop(self, request: RemoteRequest, reason: str) -> None:
        """Set the try's stop to ``reason``; raise when it cannot be sent."""

    @abstractmethod
    def cancel(self, handle: H) -> None:
        """Give the try's task up on the cluster (best effort)."""

    @abstractmethod
    def result(self, handle: H, seen: TryView) -> Ran | NotStarted | Lost | str:
        """The ended task's answer, or why it was lost (a string)."""

    @abstractmethod
    def forget(self, request: RemoteRequest) -> None:
        """Drop what the cluster keeps for this try (best effort)."""

    def unusable(self) -> str | None:
        """Why no further try can be made on this cluster (None: it can)."""
        return None

    def enter(self) -> None:
        """A command starts on this driver (``leave`` when it ended)."""

    def leave(self) -> None:
        """A command ended on this driver."""

    # --- one command ----------------------------------------------------------------------------------------

    def run(self, plan: CommandPlan, *, on_line: LineSink | None = None) -> CommandReport:
        """Run ``plan`` on the cluster to its end and return its row (never raises ``GrdError``)."""
        granted = plan.budget.remaining()
        self.enter()
        log = DriverLog(Path(plan.log_path))
        try:
            return self._run(plan, granted, on_line, log)
        finally:
            log.close()
            self.leave()

    def _run(self, plan: CommandPlan, granted: float, on_line: LineSink | None,
             log: DriverLog) -> CommandReport:
        lost: list[str] = []
        while True:
            answer = self._try(TryView(plan, on_line, log, self.kind))
            if not isinstance(answer, str):
                break
            lost.append(answer)
            log.append_line(f"[grd] {answer}")
            why = self._no_retry(plan, len(lost))
            if why is not None:
                return self._lost_row(plan, granted, lost, why, log)
            log.begin_try()
        if isinstance(answer, NotStarted):
            where = f"on {answer.host} ({self.kind} {answer.worker})"
            row = not_started(plan, granted, f"{where}: {answer.reason}")
            return row.model_copy(update={"host": answer.host, "worker": answer.worker, "note": joined(lost)})
        outcome = replace(answer.outcome, log_path=str(plan.log_path))  # the driver's copy
        row = outcome_row(plan, outcome, granted, stop_marked=answer.stop_marked)
        kept = [f"the whole log is on {answer.host} at {answer.log_kept}"] if answer.log_kept else []
        note = joined([*lost, *([row.note] if row.note else []), *kept])
        return row.model_copy(update={"host": answer.host, "worker": answer.worker, "note": note})

    def _no_retry(self, plan: CommandPlan, tries: int) -> str | None:
        unusable = self.unusable()
        if unusable is not None:
            return unusable
        if plan.budget.cancelled:
            return f"its budget was cancelled ({plan.budget.cancel_reason})"
        if plan.budget.remaining() <= 0:
            return "its budget has no time left"
        attempts = self.target(plan).attempts
        if tries >= attempts:
            return f"it had {attempts} tries (runner.attempts)"
        return None

    def _lost_row(self, plan: CommandPlan, granted: float, lost: list[str], why: str,
                  log: DriverLog) -> CommandReport:
        if plan.budget.cancelled:
            status = Status.CANCELLED
        elif plan.budget.remaining() <= 0:
            status = Status.TIMEOUT
        else:
            status = Status.FAILED
        return CommandReport(
            name=plan.name, status=status, attempts=plan.attempt,
            budget_s=None if math.isinf(granted) else round(granted, 3),
            reason=f"{joined(lost)}; not run again: {why}",
            log_path=str(log.path), attempt_logs=[*plan.earlier_logs, str(log.path)],
        )

    def _try(self, seen: TryView) -> Ran | NotStarted | str:
        """One dispatch of ``seen.plan``: its answer, or why it was lost (a string)."""
        plan = seen.plan
        request = remote_request(plan, self.topic)
        try:
            try:
                handle = self.submit(plan, request)
            except Exception as exc:  # the cluster is gone, or refuses the task
                return f"the cluster took no try ({type(exc).__name__}: {exc})"
            while True:
                done = self.done(handle)
                messages = self.take(request, handle, 0 if done else TICK_S)
                if isinstance(messages, str):
                    if done:  # the task had ended: its answer (with its whole log) may still be read
                        break
                    with contextlib.suppress(Exception):
                        self.cancel(handle)
                    return f"try on {seen.where}: {messages}"
                seen.take(messages)
                if done:
                    break
                if self._stop(request, seen):
                    with contextlib.suppress(Exception):
                        self.cancel(handle)
                    return (f"try on {seen.where} did not answer {ANSWER_S:g}s after its stop and grace: "
                            "abandoned")
            answer = self.result(handle, seen)
            if isinstance(answer, Lost):
                return (f"its {self.engine} worker was lost mid-command: try on {answer.claimed_by}"
                        f"{seen.ran_for()}")
            if isinstance(answer, Ran):
                self._trail(request, handle, seen, answer.lines)
                seen.log.replace_try(answer.log)
            return answer
        finally:
            with contextlib.suppress(Exception):
                self.forget(request)

    def _stop(self, request: RemoteRequest, seen: TryView) -> bool:
        """Send the stop once its budget is cancelled or its deadline passed; True once the try has had
        its grace, the ladder's wait and ``ANSWER_S`` since (abandon it)."""
        plan = seen.plan
        now = time.monotonic()
        if seen.stop_sent_at is None:
            if plan.budget.cancelled:
                reason = f"cancel: {plan.budget.cancel_reason}"
            elif plan.budget.remaining() <= 0:
                reason = DEADLINE
            else:
                return False
            try:
                self.send_stop(request, reason)
            except Exception as exc:  # the cluster does not answer: the try will be given up
                logging.getLogger(f"grd.{self.engine.lower()}").warning(
                    "%s: the stop (%s) did not reach the %s cluster: %s: %s", plan.label, reason, self.engine,
                    type(exc).__name__, exc)
            seen.stop_sent_at = now
            return False
        return now - seen.stop_sent_at > plan.grace_s + KILL_WAIT_S + ANSWER_S

    def _trail(self, request: RemoteRequest, handle: H, seen: TryView, lines: int) -> None:
        """Take the lines still on their way after the result (messages and the result travel apart)."""
        end = time.monotonic() + STREAM_DRAIN_S
        while seen.lines < lines and time.monotonic() < end:
            messages = self.take(request, handle, TICK_S)
            if isinstance(messages, str):
                return
            seen.take(messages)
