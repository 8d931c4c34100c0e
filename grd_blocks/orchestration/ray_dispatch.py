"""The driver side of a Ray fan-out: a dispatched command plan, run in a Ray task, reported as if local.

Invariants (the Dask fan-out's, ``dask_dispatch``, bound to Ray):

- A command's deadline stays the driver's: each try sends the seconds left in its budget at that moment
  (``remote``: the worker adds them to its own clock), and the driver stops the try when its own deadline
  passes; a cancel of the budget stops it too. A stop is a value on the dispatcher's hub the worker watches
  (``ray_worker``): the ladder runs there within the command's grace. A try that does not answer
  ``ANSWER_S`` past its grace after its stop is cancelled with ``ray.cancel(force=True)`` and abandoned.
- The task is submitted with ``max_retries=0``: a try whose worker or node is lost is run again by this
  dispatcher, as a new dispatch with the budget's seconds left then, at most ``RayTarget.attempts`` tries in
  all and only while the budget has time and is not cancelled; the row's ``note`` names every lost try.
  Nothing of a lost try runs on: grd's guardian on its machine stopped it.
- The row is ``outcome_row`` of the driver's plan and the worker's outcome, exactly as a local run's, plus
  ``host`` and ``worker`` (the Ray node id). The log at ``plan.log_path`` grows with the output as it streams
  in; once a try answers, that try's part is replaced by the worker's log, byte for byte.
- Output lines reach ``on_line`` in the calling thread, in order, while the command runs; the worker's
  ``grd.process`` lines (its ladder) are logged to this process's ``grd.process`` logger.
- Ray connects a process to one cluster: the first dispatch connects (``ray.init``) and makes the hub; a
  dispatch to another address in the same process is FAILED naming both. ``max_parallel`` is the phase's
  concurrency on the whole cluster (the engine runs at most that many at once); ``num_cpus``/``num_gpus``
  are the task's Ray resources, so Ray places it where they are free.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from grd_blocks.errors import DispatchError
from grd_blocks.orchestration.execute import CommandPlan, LineSink, not_started, outcome_row
from grd_blocks.orchestration.ray_worker import Hub, run_on_ray
from grd_blocks.orchestration.remote import (
    DEADLINE,
    DriverLog,
    Lost,
    NotStarted,
    Ran,
    RemoteRequest,
    joined,
    remote_request,
)
from grd_blocks.orchestration.status import Status
from grd_blocks.process.ladder import KILL_WAIT_S
from grd_blocks.report import CommandReport

__all__ = ["ANSWER_S", "RayDispatch", "close_dispatchers", "dispatch"]

log = logging.getLogger("grd.ray")
process_log = logging.getLogger("grd.process")

ANSWER_S = 30.0  # how long past a stop plus its grace a try may take to answer before it is abandoned
TICK_S = 0.05  # the longest a wait for output lasts before the driver checks its budget and the task
STREAM_DRAIN_S = 5.0  # how long a finished try's last lines may trail its result
SEND_S = 5.0  # how long sending a stop to the hub may take

_TASK = ray.remote(max_retries=0, retry_exceptions=False)(run_on_ray)


@dataclass
class _Try:
    """What the waiting thread saw of one try."""

    host: str | None = None
    worker: str | None = None
    started_at: float | None = None
    stop_sent_at: float | None = None
    lines: int = 0

    @property
    def where(self) -> str:
        return f"{self.host or '?'} (Ray node {self.worker or '?'})"


class RayDispatch:
    """Runs command plans on the Ray cluster at ``address`` (module docstring: invariants)."""

    def __init__(self, address: str) -> None:
        self.address = address
        try:
            if not ray.is_initialized():
                ray.init(address=address, namespace="grd", log_to_driver=False, configure_logging=False)
            here = ray.get_runtime_context().get_node_id()
            self.hub: Any = Hub.options(  # on the driver's node when it is one of the cluster's
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
        except (ConnectionError, RuntimeError, ValueError, RayError) as exc:
            raise DispatchError(
                f"cannot reach the Ray cluster at {address} ({type(exc).__name__}: {exc}); start it "
                "(ray start --head), or fix the address (the spec's runner.ray or GRD_RAY_ADDRESS)"
            ) from exc

    # --- one command --------------------------------------------------------------------------------------

    def run(self, plan: CommandPlan, *, on_line: LineSink | None = None) -> CommandReport:
        """Run ``plan`` on the cluster to its end and return its row (never raises ``GrdError``)."""
        assert plan.ray is not None
        granted = plan.budget.remaining()
        driver_log = DriverLog(plan.log_path)
        try:
            return self._run(plan, granted, on_line, driver_log)
        finally:
            driver_log.close()

    def _run(self, plan: CommandPlan, granted: float, on_line: LineSink | None,
             driver_log: DriverLog) -> CommandReport:
        lost: list[str] = []
        while True:
            answer = self._try(plan, on_line, driver_log)
            if not isinstance(answer, str):
                break
            lost.append(answer)
            driver_log.append_line(f"[grd] {answer}")
            why = self._no_retry(plan, len(lost))
            if why is not None:
                return self._lost_row(plan, granted, lost, why, driver_log)
            driver_log.begin_try()
        if isinstance(answer, NotStarted):
            row = not_started(plan, granted, f"on {answer.host} (Ray node {answer.worker}): {answer.reason}")
            return row.model_copy(update={"host": answer.host, "worker": answer.worker, "note": joined(lost)})
        outcome = replace(answer.outcome, log_path=str(plan.log_path))  # the driver's copy
        row = outcome_row(plan, outcome, granted, stop_marked=answer.stop_marked)
        kept = [f"the whole log is on {answer.host} at {answer.log_kept}"] if answer.log_kept else []
        note = joined([*lost, *([row.note] if row.note else []), *kept])
        return row.model_copy(update={"host": answer.host, "worker": answer.worker, "note": note})

    def _no_retry(self, plan: CommandPlan, tries: int) -> str | None:
        assert plan.ray is not None
        if plan.budget.cancelled:
            return f"its budget was cancelled ({plan.budget.cancel_reason})"
        if plan.budget.remaining() <= 0:
            return "its budget has no time left"
        if tries >= plan.ray.attempts:
            return f"it had {plan.ray.attempts} tries (runner.attempts)"
        return None

    def _lost_row(self, plan: CommandPlan, granted: float, lost: list[str], why: str,
                  driver_log: DriverLog) -> CommandReport:
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
            reason=f"{joined(lost)}; not run again: {why}",
            log_path=str(driver_log.path), attempt_logs=[*plan.earlier_logs, str(driver_log.path)],
        )

    def _options(self, plan: CommandPlan, request: RemoteRequest) -> dict[str, Any]:
        assert plan.ray is not None
        options: dict[str, Any] = {"name": f"grd-{plan.label}-{request.token[:8]}"}
        if plan.ray.num_cpus is not None:
            options["num_cpus"] = plan.ray.num_cpus
        if plan.ray.num_gpus is not None:
            options["num_gpus"] = plan.ray.num_gpus
        return options

    def _try(self, plan: CommandPlan, on_line: LineSink | None,
             driver_log: DriverLog) -> Ran | NotStarted | str:
        """One dispatch of ``plan``: its answer, or why it was lost (a string)."""
        request = remote_request(plan, "ray-hub")
        seen = _Try()
        try:
            try:
                ref = _TASK.options(**self._options(plan, request)).remote(request, self.hub)
            except Exception as exc:  # the cluster is gone, or refuses the resources
                return f"the cluster took no try ({type(exc).__name__}: {exc})"
            while True:
                ready, _ = ray.wait([ref], timeout=0)
                try:
                    messages = ray.get(self.hub.take.remote(request.token, 0 if ready else TICK_S))
                except RayError as exc:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                    return f"try on {seen.where}: grd's hub on the Ray cluster is gone ({type(exc).__name__})"
                self._drain(messages, seen, plan, on_line, driver_log)
                if ready:
                    break
                if self._stop(plan, request, seen):
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                    return (f"try on {seen.where} did not answer {ANSWER_S:g}s after its stop and grace: "
                            "abandoned")
            try:
                answer: Ran | NotStarted | Lost = ray.get(ref)
            except RayError as exc:  # its worker process or node died, or Ray cancelled it
                ran = "" if seen.started_at is None else f" after {time.monotonic() - seen.started_at:.1f}s"
                return f"its Ray worker was lost mid-command: try on {seen.where}{ran} ({type(exc).__name__})"
            if isinstance(answer, Lost):
                return f"its Ray worker was lost mid-command: try on {answer.claimed_by}"
            if isinstance(answer, Ran):
                self._trail(request, seen, plan, on_line, driver_log, answer.lines)
                driver_log.replace_try(answer.log)
            return answer
        finally:
            with contextlib.suppress(Exception):
                self.hub.forget.remote(request.token)

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
                ray.get(self.hub.set_stop.remote(request.token, reason), timeout=SEND_S)
            except (RayError, GetTimeoutError) as exc:  # the try will be given up
                log.warning("%s: the stop (%s) did not reach grd's hub on the Ray cluster: %s: %s",
                            plan.label, reason, type(exc).__name__, exc)
            seen.stop_sent_at = now
            return False
        return now - seen.stop_sent_at > plan.grace_s + KILL_WAIT_S + ANSWER_S

    def _drain(self, messages: list[dict[str, Any]], seen: _Try, plan: CommandPlan, on_line: LineSink | None,
               driver_log: DriverLog) -> None:
        for message in messages:
            kind = message.get("k")
            if kind == "line":
                seen.lines += 1
                text = str(message.get("l", ""))
                driver_log.append_line(text)
                if on_line is not None:
                    on_line(str(message.get("s", "stdout")), text)
            elif kind == "log":
                process_log.log(int(message.get("level", logging.INFO)), "%s (on %s)", message.get("m"),
                                seen.host)
            elif kind == "start":
                seen.host, seen.worker = str(message.get("host")), str(message.get("worker"))
                seen.started_at = time.monotonic()
                process_log.info("%s: running on %s (Ray node %s, pid %s)", plan.label, seen.host,
                                 seen.worker, message.get("pid"))

    def _trail(self, request: RemoteRequest, seen: _Try, plan: CommandPlan, on_line: LineSink | None,
               driver_log: DriverLog, lines: int) -> None:
        """Take the lines still on their way after the result (pushes and the result travel apart)."""
        end = time.monotonic() + STREAM_DRAIN_S
        while seen.lines < lines and time.monotonic() < end:
            try:
                messages = ray.get(self.hub.take.remote(request.token, TICK_S))
            except RayError:
                return
            self._drain(messages, seen, plan, on_line, driver_log)


_DISPATCHER: RayDispatch | None = None
_DISPATCHER_LOCK = threading.Lock()


def dispatcher(address: str) -> RayDispatch:
    """This process's dispatcher (made on first use; ``DispatchError`` if the cluster is unreachable or this
    process is connected to another one)."""
    global _DISPATCHER
    with _DISPATCHER_LOCK:
        if _DISPATCHER is not None and _DISPATCHER.address != address:
            raise DispatchError(
                f"this process is connected to the Ray cluster at {_DISPATCHER.address}, and Ray connects a "
                f"process to one cluster only: runner.ray {address!r} cannot be reached from it; name the "
                "same address in every phase of one run"
            )
        if _DISPATCHER is None:
            _DISPATCHER = RayDispatch(address)
        return _DISPATCHER


def close_dispatchers() -> None:
    """Forget this process's dispatcher and disconnect from its cluster (a later dispatch connects again)."""
    global _DISPATCHER
    with _DISPATCHER_LOCK:
        found, _DISPATCHER = _DISPATCHER, None
    if found is not None:
        with contextlib.suppress(Exception):
            ray.kill(found.hub)
        ray.shutdown()


def dispatch(plan: CommandPlan, *, on_line: LineSink | None = None) -> CommandReport:
    """Run ``plan`` on its Ray target (``plan.ray``) and return its row; never raises ``GrdError``."""
    assert plan.ray is not None
    try:
        found = dispatcher(plan.ray.address)
    except DispatchError as exc:
        return not_started(plan, plan.budget.remaining(), str(exc))
    return found.run(plan, on_line=on_line)
