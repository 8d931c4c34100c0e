"""The driver side of a Dask fan-out: a dispatched command plan, run on a Dask cluster, reported as if local.

Invariants:

- A command's deadline stays the driver's: each try sends the seconds left in its budget at that moment
  (``dask_worker``: the worker adds them to its own clock), and the driver stops the try when its own
  deadline passes; a cancel of the budget (a phase's ``on_timeout`` stop, the run stopped by a cancel, a
  signal or Ctrl-C) stops it too. A stop is a ``Variable`` the worker watches: the ladder runs there within
  the command's grace. A try that does not answer ``ANSWER_S`` past its grace after its stop is abandoned.
- A try whose worker is lost (Dask re-runs the task elsewhere and it finds its claim, or Dask gives up on
  it) is run again, as a new dispatch with the budget's seconds left then, at most ``DaskTarget.attempts``
  tries in all and only while the budget has time and is not cancelled; the row's ``note`` names every lost
  try (host, worker, how long it ran). Nothing of a lost try runs on: its worker's guardian stopped it.
- The row is ``outcome_row`` of the driver's plan and the worker's outcome, exactly as a local run's, plus
  ``host`` and ``worker``. The log at ``plan.log_path`` grows with the output as it streams in; once a try
  answers, that try's part is replaced by the worker's log, byte for byte (a lost try keeps what streamed,
  followed by one line saying it was lost).
- Output lines reach ``on_line`` in the calling thread, in order, while the command runs; the worker's
  ``grd.process`` lines (its ladder) are logged to this process's ``grd.process`` logger.
- A scheduler that goes away ends the tries in flight as lost once the client gives up reconnecting (Dask's
  reconnect timeout, 10 s by default); they are not retried on that client, and the next dispatch to that
  address makes a new one.
- One client per scheduler address per process, made on first use and closed at exit; one topic per client
  carries every dispatch's messages, routed by token. Concurrency is the caller's: the engine runs at most
  ``max_parallel`` of a phase's commands at once, so that is the phase's concurrency on the whole cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from distributed import Client, Future, Variable
from distributed.client import FutureCancelledError

from grd_blocks.errors import DispatchError
from grd_blocks.orchestration.dask_worker import (
    DEADLINE,
    Lost,
    NotStarted,
    Ran,
    RemoteRequest,
    run_on_worker,
)
from grd_blocks.orchestration.execute import CommandPlan, LineSink, not_started, outcome_row
from grd_blocks.orchestration.remote import DriverLog as _Log
from grd_blocks.orchestration.remote import joined as _joined
from grd_blocks.orchestration.remote import remote_request
from grd_blocks.orchestration.status import Status
from grd_blocks.process.ladder import KILL_WAIT_S
from grd_blocks.report import CommandReport

__all__ = ["ANSWER_S", "CONNECT_S", "DaskDispatch", "close_dispatchers", "dispatch"]

log = logging.getLogger("grd.dask")
process_log = logging.getLogger("grd.process")

CONNECT_S = 10.0  # how long a scheduler may take to accept the driver's client
ANSWER_S = 30.0  # how long past a stop plus its grace a try may take to answer before it is abandoned
TICK_S = 0.05  # how often the driver checks its budget while it waits for output or the result
STREAM_DRAIN_S = 5.0  # how long a finished try's last lines may trail its result
SEND_S = 5.0  # how long sending a stop to the scheduler may take


class _Stream:
    """One dispatch's messages, handed from the client's event loop to the waiting thread."""

    def __init__(self) -> None:
        self.messages: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.lines = 0

    def put(self, message: dict[str, Any]) -> None:
        self.messages.put(message)
        self.wake.set()


@dataclass
class _Try:
    """What the waiting thread saw of one try."""

    host: str | None = None
    worker: str | None = None
    started_at: float | None = None
    stop_sent_at: float | None = None


class DaskDispatch:
    """Runs command plans on the Dask cluster at ``address`` (module docstring: invariants)."""

    def __init__(self, address: str, *, connect_s: float | None = None) -> None:
        self.address = address
        connect_s = CONNECT_S if connect_s is None else connect_s
        try:
            self.client = Client(address, timeout=connect_s, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise DispatchError(
                f"cannot reach the Dask scheduler at {address} within {connect_s:.0f}s ({exc}); start it "
                "(dask scheduler), or fix the address (the spec's runner.dask, the dask_scheduler parameter "
                "or GRD_DASK_SCHEDULER)"
            ) from exc
        self.topic = f"grd-output-{uuid.uuid4().hex}"
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._running = 0  # commands in flight: a close waits for the last of them
        self._closing = False
        self.client.subscribe_topic(self.topic, self._route)

    def _route(self, event: tuple[float, dict[str, Any]]) -> None:
        message = event[1]
        with self._lock:
            stream = self._streams.get(str(message.get("t")))
        if stream is not None:
            stream.put(message)

    @property
    def connected(self) -> bool:
        """False once the client gave up its scheduler (it closes itself after its reconnect timeout)."""
        return str(self.client.status) not in ("closing", "closed")

    def enter(self) -> None:
        """Count one more command in flight (``run`` does; ``dispatcher`` does it for the command it hands
        the dispatcher to, so no close comes between)."""
        with self._lock:
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            last = self._closing and self._running == 0
        if last:
            self.client.close()

    def close(self) -> None:
        """Close the client now, or once the commands still in flight have ended (a run's end may come
        while a stopped command's ladder still runs on its worker)."""
        with self._lock:
            self._closing = True
            idle = self._running == 0
        if idle:
            self.client.close()

    # --- one command --------------------------------------------------------------------------------------

    def run(self, plan: CommandPlan, *, on_line: LineSink | None = None) -> CommandReport:
        """Run ``plan`` on the cluster to its end and return its row (never raises ``GrdError``)."""
        assert plan.dask is not None
        granted = plan.budget.remaining()
        self.enter()
        log = _Log(plan.log_path)
        try:
            return self._run(plan, granted, on_line, log)
        finally:
            log.close()
            self.leave()

    def _run(self, plan: CommandPlan, granted: float, on_line: LineSink | None, log: _Log) -> CommandReport:
        lost: list[str] = []
        while True:
            answer = self._try(plan, on_line, log)
            if not isinstance(answer, str):
                break
            lost.append(answer)
            log.append_line(f"[grd] {answer}")
            why = self._no_retry(plan, len(lost))
            if why is not None:
                return self._lost_row(plan, granted, lost, why, log)
            log.begin_try()
        if isinstance(answer, NotStarted):
            where = f"on {answer.host} (Dask worker {answer.worker})"
            row = not_started(plan, granted, f"{where}: {answer.reason}")
            return row.model_copy(update={"host": answer.host, "worker": answer.worker,
                                          "note": _joined(lost)})
        outcome = replace(answer.outcome, log_path=str(plan.log_path))  # the driver's copy
        row = outcome_row(plan, outcome, granted, stop_marked=answer.stop_marked)
        kept = [f"the whole log is on {answer.host} at {answer.log_kept}"] if answer.log_kept else []
        note = _joined([*lost, *([row.note] if row.note else []), *kept])
        return row.model_copy(update={"host": answer.host, "worker": answer.worker, "note": note})

    def _no_retry(self, plan: CommandPlan, tries: int) -> str | None:
        assert plan.dask is not None
        if not self.connected:
            return f"the Dask scheduler at {self.address} does not answer"
        if plan.budget.cancelled:
            return f"its budget was cancelled ({plan.budget.cancel_reason})"
        if plan.budget.remaining() <= 0:
            return "its budget has no time left"
        if tries >= plan.dask.attempts:
            return f"it had {plan.dask.attempts} tries (runner.attempts)"
        return None

    def _lost_row(self, plan: CommandPlan, granted: float, lost: list[str], why: str,
                  log: _Log) -> CommandReport:
        """No try answered: CANCELLED when its budget was cancelled, TIMEOUT when its time ran out, else
        FAILED; the reason names every lost try."""
        if plan.budget.cancelled:
            status = Status.CANCELLED
        elif plan.budget.remaining() <= 0:
            status = Status.TIMEOUT
        else:
            status = Status.FAILED
        return CommandReport(
            name=plan.name, status=status, attempts=plan.attempt,
            budget_s=None if math.isinf(granted) else round(granted, 3),
            reason=f"{_joined(lost)}; not run again: {why}",
            log_path=str(log.path), attempt_logs=[*plan.earlier_logs, str(log.path)],
        )

    def _try(self, plan: CommandPlan, on_line: LineSink | None, log: _Log) -> Ran | NotStarted | str:
        """One dispatch of ``plan``: its answer, or why it was lost (a string)."""
        request = remote_request(plan, self.topic)
        stream = _Stream()
        with self._lock:
            self._streams[request.token] = stream
        seen = _Try()
        try:
            key = f"grd-{plan.label}-{request.token}"
            try:
                future: Future = self.client.submit(run_on_worker, request, key=key, pure=False, retries=0)
            except Exception as exc:  # the client is closed, or cannot reach its scheduler
                return f"the cluster took no try ({type(exc).__name__}: {exc})"
            future.add_done_callback(lambda _: stream.wake.set())
            while not future.done():
                stream.wake.wait(TICK_S)
                stream.wake.clear()
                self._drain(stream, seen, plan, on_line, log)
                if not self.connected:
                    where = f"{seen.host or '?'} (Dask worker {seen.worker or '?'})"
                    return (f"try on {where}: the Dask scheduler at {self.address} went away (the client "
                            "gave up reconnecting)")
                if self._stop(plan, request, seen):
                    with contextlib.suppress(Exception):
                        future.cancel()
                    return (f"try on {seen.host or '?'} (Dask worker {seen.worker or '?'}) did not answer "
                            f"{ANSWER_S:g}s after its stop and grace: abandoned")
            try:
                answer: Ran | NotStarted | Lost = future.result()
            except FutureCancelledError as exc:
                return f"the cluster cancelled the try ({exc})"
            except Exception as exc:  # KilledWorker, or the task failed before the command could start
                where = f"{seen.host or '?'} (Dask worker {seen.worker or '?'})"
                return f"try on {where} failed: {type(exc).__name__}: {exc}"
            if isinstance(answer, Lost):
                ran = "" if seen.started_at is None else f" after {time.monotonic() - seen.started_at:.1f}s"
                return f"its Dask worker was lost mid-command: try on {answer.claimed_by}{ran}"
            if isinstance(answer, Ran):
                self._trail(stream, seen, plan, on_line, log, answer.lines)
                log.replace_try(answer.log)
            return answer
        finally:
            with self._lock:
                self._streams.pop(request.token, None)
            for name in (request.claim, request.stop):
                with contextlib.suppress(Exception):  # a scheduler gone keeps nothing to delete
                    Variable(name, client=self.client).delete()

    def _stop(self, plan: CommandPlan, request: RemoteRequest, seen: _Try) -> bool:
        """Send the stop once its budget is cancelled or its deadline passed; True once the try has had
        its grace and ``ANSWER_S`` since (abandon it)."""
        now = time.monotonic()
        if seen.stop_sent_at is None:
            if plan.budget.cancelled:
                reason = f"cancel: {plan.budget.cancel_reason}"
            elif plan.budget.remaining() <= 0:
                reason = DEADLINE
            else:
                return False
            try:
                Variable(request.stop, client=self.client).set(reason, callback_timeout=SEND_S)
            except Exception as exc:  # the scheduler does not answer: the try will be given up
                log.warning("%s: the stop (%s) did not reach the Dask scheduler: %s: %s", plan.label, reason,
                            type(exc).__name__, exc)
            seen.stop_sent_at = now
            return False
        return now - seen.stop_sent_at > plan.grace_s + KILL_WAIT_S + ANSWER_S

    def _drain(self, stream: _Stream, seen: _Try, plan: CommandPlan, on_line: LineSink | None,
               log: _Log) -> None:
        while True:
            try:
                message = stream.messages.get_nowait()
            except queue.Empty:
                return
            kind = message.get("k")
            if kind == "line":
                stream.lines += 1
                text = str(message.get("l", ""))
                log.append_line(text)
                if on_line is not None:
                    on_line(str(message.get("s", "stdout")), text)
            elif kind == "log":
                process_log.log(int(message.get("level", logging.INFO)), "%s (on %s)", message.get("m"),
                                seen.host)
            elif kind == "start":
                seen.host, seen.worker = str(message.get("host")), str(message.get("worker"))
                seen.started_at = time.monotonic()
                process_log.info("%s: running on %s (Dask worker %s, pid %s)", plan.label, seen.host,
                                 seen.worker, message.get("pid"))

    def _trail(self, stream: _Stream, seen: _Try, plan: CommandPlan, on_line: LineSink | None, log: _Log,
               lines: int) -> None:
        """Take the lines still on their way after the result (the topic and the result travel apart)."""
        end = time.monotonic() + STREAM_DRAIN_S
        self._drain(stream, seen, plan, on_line, log)
        while stream.lines < lines and time.monotonic() < end:
            stream.wake.wait(TICK_S)
            stream.wake.clear()
            self._drain(stream, seen, plan, on_line, log)


_DISPATCHERS: dict[str, DaskDispatch] = {}
_DISPATCHERS_LOCK = threading.Lock()


def dispatcher(address: str) -> DaskDispatch:
    """This process's dispatcher for ``address`` (made on first use; ``DispatchError`` if unreachable),
    counted as in flight until the caller's ``leave()``."""
    with _DISPATCHERS_LOCK:
        found = _DISPATCHERS.get(address)
        if found is None or not found.connected:  # a scheduler that went away may be back
            found = _DISPATCHERS[address] = DaskDispatch(address)
        found.enter()
        return found


def close_dispatchers() -> None:
    """Close every client this process made (at exit; a later dispatch makes a new one)."""
    with _DISPATCHERS_LOCK:
        dispatchers = list(_DISPATCHERS.values())
        _DISPATCHERS.clear()
    for found in dispatchers:
        found.close()


atexit.register(close_dispatchers)


def dispatch(plan: CommandPlan, *, on_line: LineSink | None = None) -> CommandReport:
    """Run ``plan`` on its Dask target (``plan.dask``) and return its row; never raises ``GrdError``."""
    assert plan.dask is not None
    try:
        found = dispatcher(plan.dask.address)
    except DispatchError as exc:
        return not_started(plan, plan.budget.remaining(), str(exc))
    try:
        return found.run(plan, on_line=on_line)
    finally:
        found.leave()

