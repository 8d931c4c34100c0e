"""The benchmark flow: benchmark -> a subflow per phase -> a task per command: the engine's Prefect runner.

The loop, gates, stops and reports are the engine's (orchestration/benchmark.py); this module gives it a
runner (a phase's body runs as a subflow, each dispatched command plan as a task whose one argument is that
plan) and turns the engine's report into Prefect states, events, an artifact and log lines.

Invariant: every command runs through ``grd_blocks.process.run_command`` with its budget's effective deadline.
Prefect's own ``timeout_seconds`` is only a backstop, set beyond the deadline plus grace and a margin, on the
phase subflows and cleanup tasks (they run in the main thread, where Prefect can interrupt them; command tasks
run in worker threads, where it cannot, and an interrupted phase cancels them down the kill ladder). Each
node's Prefect state matches its report status (Completed, Failed, Failed named TimedOut, Cancelled), the
report is written as JSON and published as a table artifact, and each finished command is committed to the
run's progress so a retry (same flow run id) or a new run with ``resume_from`` skips what already completed.
A run stopped by a signal (the SIGTERM of a cancel or of a stopping worker, Ctrl-C) writes its report at
once, runs the benchmark's cleanup, publishes the table with what finished, logs one line saying what is kept
and how to resume, and ends Cancelled (unless the process supervising it owns its next state: it re-raises).
An API that stops answering (api_outage.py) is ridden out for Prefect's client retry window; past it, a phase
whose subflow cannot be created ends the run (``RunnerGone``): one ERROR line names the server, the limit,
what was kept and how to continue, and the report (written first) has every finished command's row.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.results import ResultRecord  # type: ignore[attr-defined]  # re-exported, not in __all__
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from grd_blocks.budget.approval import approved_limit
from grd_blocks.errors import BenchmarkIncomplete
from grd_blocks.orchestration.benchmark import (
    BenchmarkRun,
    CommandPlan,
    LostPhase,
    PhasePlan,
    RunnerGone,
    dask_address,
    execute,
    ray_address,
    run_benchmark,
)
from grd_blocks.orchestration.line_batches import line_logger
from grd_blocks.orchestration.runkey import resolve_run_key
from grd_blocks.orchestration.status import Status
from grd_blocks.prefect_edge.api_outage import outage_line, unreachable
from grd_blocks.prefect_edge.approval import approval_asker
from grd_blocks.prefect_edge.event_backlog import wait_for_event_delivery
from grd_blocks.prefect_edge.events import command_failed, command_timed_out, phase_completed, run_resumed
from grd_blocks.prefect_edge.forms import OptionalText, Title, unset_if_blank
from grd_blocks.prefect_edge.heartbeats import install as prompt_heartbeats
from grd_blocks.prefect_edge.process_log import process_log_to
from grd_blocks.prefect_edge.run_end import MISTAKES, REFUSALS, quiet_run_ends, rejected, report_of
from grd_blocks.prefect_edge.states import final_state, publish_results
from grd_blocks.prefect_edge.stops import cancel_requested, retries_left, supervisor_owns_stop
from grd_blocks.prefect_edge.store import open_store
from grd_blocks.report import BenchmarkReport, CommandReport, PhaseReport
from grd_blocks.spec import BenchmarkSpec, load_spec
from grd_blocks.timeline import mark

__all__ = ["PrefectRunner", "benchmark", "command_task"]

prompt_heartbeats()  # each phase subflow's end, and the run's, waits for no heartbeat sleep (heartbeats.py)


class _Handoff:
    """Report rows of command tasks run in this process, handed to the runner that called each task instead
    of through the task's state: Prefect keeps a copy of every task state whose data it can track (with its
    state details) for the rest of the flow run, about 1.5 KB per command; a state without data it keeps
    nowhere. The runner expects a row for the plan it passes (the task receives that very object) and takes
    it after the call; a row nobody expects any more (its task outlived a Prefect backstop) is dropped."""

    def __init__(self) -> None:
        self._rows: dict[int, tuple[CommandPlan, CommandReport | None]] = {}
        self._lock = threading.Lock()

    def expect(self, plan: CommandPlan) -> None:
        with self._lock:
            self._rows[id(plan)] = (plan, None)

    def put(self, plan: CommandPlan, row: CommandReport) -> None:
        with self._lock:
            if id(plan) in self._rows and self._rows[id(plan)][0] is plan:
                self._rows[id(plan)] = (plan, row)

    def take(self, plan: CommandPlan) -> CommandReport | None:
        with self._lock:
            _, row = self._rows.pop(id(plan), (plan, None))
        return row


_HANDOFF = _Handoff()


class PhaseResult:
    """What a phase subflow's state carries: its report, as one opaque object (Prefect walks a state's data
    to track results: an opaque object is one step of that walk; a dict of every row would be a second copy
    of the phase's rows, validated again into a third)."""

    __slots__ = ("report",)

    def __init__(self, report: PhaseReport) -> None:
        self.report = report

    def __repr__(self) -> str:
        return f"PhaseResult({self.report.name}: {self.report.status.value})"


# The command task's result is never persisted (its row goes to its runner in the process), yet Prefect makes
# a result record for each task run, keyed by a fresh uuid that resolving it as a path interns: the
# interpreter's table of interned strings fills with dead keys until it is rebuilt, at twice its size (~2 MB
# at ~7,500 commands). One fixed key (``COMMAND_RESULT_KEY``) interns nothing new.
COMMAND_RESULT_KEY = "grd-command-result-not-persisted"


@task(name="grd-command", cache_policy=NO_CACHE, persist_result=False, result_storage_key=COMMAND_RESULT_KEY,
      task_run_name="{plan.phase}.{plan.name}")
def command_task(plan: CommandPlan) -> State[Any]:
    """Run one dispatched command plan (a cleanup's budget is shielded: a cancel of the run does not stop it).
    Its final state's message is the outcome (Prefect logs it as "Finished in state ..."), so nothing else is
    logged per command but the command's own output lines."""
    mark("task")
    label = plan.label
    logger = get_run_logger()
    sink = line_logger(logger, label, str(plan.log_path))
    try:
        with process_log_to(logger, label):  # the kill ladder's steps, in this task run's log
            row = execute(plan, on_line=sink)
    finally:
        sink.close()
    if not plan.cleanup:
        _announce(plan.run_key, plan.phase, plan.name, row)
    message = f"{label}: {row.status.value} (returncode {row.returncode}, {row.elapsed_s:.1f}s)"
    if row.timeout is not None:  # the kill ladder's outcome, beside its steps logged above
        stop = row.timeout
        term = "no SIGTERM" if stop.term_sent_s is None else f"SIGTERM at {stop.term_sent_s:.1f}s"
        kill = "no SIGKILL" if stop.kill_sent_s is None else f"SIGKILL at {stop.kill_sent_s:.1f}s"
        message += f"; {stop.level} deadline: {term}, {kill}, {stop.survivors} survivor(s)"
    _HANDOFF.put(plan, row)
    return final_state(row.status, None, message)


def _announce(run_key: str, phase: str, command: str, row: CommandReport) -> None:
    """Prefect events for automations: ``grd.command.failed`` for a FAILED command, and
    ``grd.command.timed_out`` (with the report's timeout block) for a TIMEOUT; a completed command has none
    of its own (its phase's ``grd.phase.completed`` counts it). Buffered; never raises."""
    if row.resumed:
        return
    if row.status is Status.FAILED:
        command_failed(run_key, phase, command, returncode=row.returncode, elapsed_s=row.elapsed_s,
                       reason=row.reason)
    elif row.status is Status.TIMEOUT and row.timeout is not None:
        command_timed_out(run_key, phase, command, timeout=row.timeout.model_dump(mode="json"))


def _announce_resume(run: BenchmarkRun) -> None:
    """``grd.run.resumed`` when this attempt starts with commands an earlier one completed (to be skipped)."""
    done = run.completed_earlier()
    if done:
        run.logger.info("resuming run %s: %d completed command(s) will be skipped", run.run_key, len(done))
        run_resumed(run.run_key, attempt=int(flow_run.run_count or 1), detail={"skipped": done})


def _state_data(state: State[Any]) -> Any:
    """What a finished run returned, read from memory when Prefect kept it there (no event-loop hop)."""
    data = state.data
    if isinstance(data, ResultRecord):
        return report_of(data.result)
    return report_of(state.result(raise_on_failure=False))


def _row_from_state(state: State[Any], name: str) -> CommandReport:
    """The row of a command task whose own row never reached the handoff (Prefect ended the task first)."""
    status = Status.TIMEOUT if state.name == "TimedOut" else Status.FAILED
    reason = f"Prefect ended the task: {state.name}: {state.message}"
    return CommandReport(name=name, status=status, reason=reason)


def _forget_no_assets(state: State[Any]) -> None:
    """Drop the command task's entry from its flow run's asset map when it produced no asset (a grd command
    produces none). Prefect keeps, for the rest of the flow run, the assets each task run hands downstream:
    an empty set and the task run's id, ~0.4 KB per command of a long phase; nothing runs downstream of a
    command task, so an empty entry is nothing Prefect will read."""
    assets = getattr(FlowRunContext.get(), "task_run_assets", None)
    task_run_id = getattr(state.state_details, "task_run_id", None)
    if isinstance(assets, dict) and task_run_id is not None and not assets.get(task_run_id, True):
        assets.pop(task_run_id, None)


@functools.lru_cache(maxsize=32)
def _command_runner(backstop: float | None) -> Task[..., State[Any]]:
    """The command task with Prefect's ``timeout_seconds`` backstop (built once per distinct value)."""
    return command_task if backstop is None else command_task.with_options(timeout_seconds=backstop)


class PrefectRunner:
    """The engine's runner on Prefect: a phase's body runs as a ``grd-phase`` subflow run named after the
    phase, each command plan as a ``grd-command`` task run named ``phase.command``."""

    def __init__(self, run_key: str) -> None:
        self.run_key = run_key

    def phase(
        self, phase: PhasePlan, backstop_s: float | None, body: Callable[[], PhaseReport]
    ) -> PhaseReport:
        run_key = self.run_key

        @flow(name="grd-phase", validate_parameters=False, flow_run_name=phase.name,
              timeout_seconds=backstop_s)
        def phase_flow(phase: str) -> State[Any]:
            """Run one phase: its commands (up to ``max_parallel`` at once), then its cleanup, shielded."""
            mark("phase")
            report = body()
            phase_completed(run_key, phase, status=report.status.value, elapsed_s=report.elapsed_s,
                            commands={row.name: row.status.value for row in report.commands})
            return final_state(report.status, PhaseResult(report), f"phase {phase}: {report.status.value}")

        try:
            state = phase_flow(phase.name, return_state=True)
            mark("phase_end")
        except Exception as exc:
            if unreachable(exc):  # its flow run could not even be created or started
                raise RunnerGone(outage_line(exc)) from exc
            raise
        data = _state_data(state)
        if isinstance(data, PhaseResult):
            return data.report
        if isinstance(data, BaseException) and unreachable(data):
            reason = f"the phase's flow run could not record its end: {outage_line(data)}"
            get_run_logger().warning("phase %s: %s; every command that finished keeps its result (from the "
                                     "run's progress)", phase.name, reason)
            raise LostPhase(reason)
        raise LostPhase(f"the phase flow ended as {state.name}: {state.message}")

    def command(self, plan: CommandPlan, backstop_s: float | None) -> CommandReport:
        wait_for_event_delivery()  # memory stays bounded when commands end faster than the API takes events
        _HANDOFF.expect(plan)
        try:
            state = _command_runner(backstop_s)(quote(plan), return_state=True)
        finally:
            row = _HANDOFF.take(plan)
        _forget_no_assets(state)
        mark("task_end")
        return row if row is not None else _row_from_state(state, plan.name)


def _approved_limit(
    spec: BenchmarkSpec, run_key: str, store: str | None, approval_budget: str | None, *, auto_approve: bool
) -> float | None:
    """The long-run limit for this run (``budget.approval``'s policy; the estimate is the spec's timeout),
    asked once per run key through the Prefect pause (retries reuse the decision)."""
    decided = approved_limit(run_key, spec.timeout, approval_budget,
                             ask=approval_asker(auto_approve=auto_approve, store=store),
                             no_estimate=f"benchmark {spec.name} has no timeout", log=get_run_logger())
    return None if decided is None else decided.limit_s


def _log_outcome(logger: Any, report: BenchmarkReport, path: Path | str) -> None:
    """The run's last line of its own: ``benchmark demo: TIMEOUT, exit code 124, report PATH`` (a WARNING
    unless it completed; the commands' own failures were logged as they happened)."""
    level = logging.INFO if report.status in (Status.COMPLETED, Status.SKIPPED) else logging.WARNING
    logger.log(level, "benchmark %s: %s, exit code %s, report %s", report.benchmark, report.status.value,
               report.exit_code, path)


@flow(name="grd-benchmark", validate_parameters=True)
def benchmark(
    spec_path: Annotated[str, Title("Spec file")],
    run_key: Annotated[str | None, OptionalText, Title("Run key")] = "",
    resume_from: Annotated[str | None, OptionalText, Title("Resume from")] = "",
    store: Annotated[str | None, OptionalText, Title("Checkpoint store")] = "",
    timeouts: Annotated[bool, Title("Timeouts")] = True,
    report_path: Annotated[str | None, OptionalText, Title("Report path")] = "",
    approval_budget: Annotated[str | None, OptionalText, Title("Approval budget")] = "",
    auto_approve: Annotated[bool, Title("Auto-approve")] = False,
    dask_scheduler: Annotated[str | None, OptionalText, Title("Dask scheduler")] = "",
) -> State[Any]:
    """Run the benchmark in ``spec_path`` (YAML); its report goes to ``report_path`` (default
    ``reports/<run_key>/report.json``) and command logs beside it in ``<report dir>/<run_key>/``.

    Args:
        spec_path: The benchmark spec (YAML), e.g. examples/benchmark.yaml; a relative path is relative to
            the worker's checkout.
        run_key: The run's identity in the checkpoint store. Empty: resume_from if set, else this flow
            run's id (so a Retry of this run resumes it).
        resume_from: The run key of an earlier run to continue: its completed commands are skipped and
            the others run again. Empty: start afresh (unless run_key names an earlier run).
        store: Where progress and checkpoints go: a CheckpointStore block name (e.g. nightly-s3) or a URL
            or path (s3://bucket/prefix, ./checkpoints). Empty: the block named default (./checkpoints).
        timeouts: Enforce every deadline of the spec. Turn off only to debug a benchmark.
        report_path: Where the JSON report is written on the worker. Empty: reports/RUN_KEY/report.json;
            command logs go beside it, in REPORT_DIR/RUN_KEY/.
        approval_budget: A duration such as 2h: a benchmark whose own timeout exceeds it waits for a
            person's approval (the UI's Resume form or grd approve) before any phase starts. Empty: never
            ask.
        auto_approve: Approve a long run without asking, recording the estimate as the limit (CI).
        dask_scheduler: A Dask scheduler address (tcp://scheduler:8786) that runs the commands of every
            phase whose spec names no runner, each under grd's runner on a worker. Empty: the worker's
            GRD_DASK_SCHEDULER, else this machine (docs/beyond-one-machine.md).
    """
    run_key, resume_from, store = unset_if_blank(run_key), unset_if_blank(resume_from), unset_if_blank(store)
    report_path, approval_budget = unset_if_blank(report_path), unset_if_blank(approval_budget)
    dask_scheduler = unset_if_blank(dask_scheduler)
    mark("flow")
    quiet_run_ends()
    logger = get_run_logger()
    context = FlowRunContext.get()
    flow_run_id = str(context.flow_run.id) if context is not None and context.flow_run is not None else None
    try:
        spec = load_spec(spec_path)
        dask = dask_address(dask_scheduler, os.environ)  # before a person is asked to approve anything
        ray = ray_address(os.environ)
        key = resolve_run_key(run_key, resume_from, flow_run_id)
        limit_s = _approved_limit(spec, key, store, approval_budget, auto_approve=auto_approve)
        opened = open_store(store, key)
    except (*MISTAKES, *REFUSALS) as exc:  # the user's to fix: one line, no traceback
        return rejected(exc, logger, f"benchmark {spec_path}")
    logs_dir = (Path(report_path).parent if report_path else Path("reports")) / key
    run = BenchmarkRun(spec=spec, run_key=key, logs_dir=logs_dir, timeouts=timeouts, limit_s=limit_s,
                       store=opened.access, progress_root=opened.progress, command_prefixes=opened.commands,
                       logger=logger, resume_from=resume_from or None, dask=dask,
                       ray=ray)
    del spec  # the run has its plan: the spec's models (a 10,000-command spec's are ~7 MB) can go
    logger.info("benchmark %s: run key %s, timeouts %s, logs in %s", run.plan.name, key,
                "on" if run.timeouts else "OFF", logs_dir)
    _announce_resume(run)
    mark("run")
    finished = run_benchmark(run, PrefectRunner(key),
                             report_path=Path(report_path or logs_dir / "report.json"),
                             flow_run_id=flow_run_id, stop_is_ours=lambda: not supervisor_owns_stop())
    report, stop = finished.report, finished.stop
    if finished.gone is not None:
        return _api_gone(report, finished.gone, logger)
    publish_results(report, logger, finished.path)
    _log_outcome(logger, report, finished.path)
    if stop is not None:
        return _stopped(report, stop, logger)
    if report.status in (Status.FAILED, Status.TIMEOUT) and retries_left() > 0:
        incomplete = BenchmarkIncomplete(
            f"benchmark {run.plan.name!r} attempt ended {report.status.value}; retrying under run key "
            f"{key!r}, which skips every command that completed"
        )
        logger.warning("%s", incomplete)  # the one line; Prefect's traceback of it is filtered
        raise incomplete
    return final_state(report.status, report,
                       f"benchmark {run.plan.name}: {report.status.value}, exit code {report.exit_code}")


def _kept(report: BenchmarkReport, retry: str) -> str:
    """"N of M command(s) completed and are kept; ``retry`` ... runs the other K" (or that nothing was
    committed, so a resume runs every command again)."""
    rows = [row for phase in report.phases for row in phase.commands]
    done = sum(row.status in (Status.COMPLETED, Status.SKIPPED) for row in rows)
    committed = report.progress is not None and report.progress.committed
    how = (f"{retry} runs the other {len(rows) - done}" if committed
           else "its progress was not committed: a resume runs every command again")
    return f"{done} of {len(rows)} command(s) completed and are kept; {how}"


def _api_gone(report: BenchmarkReport, reason: str, logger: Any) -> State[Any]:
    """A run whose API stayed unreachable: one line saying so, what was kept and how to continue; it ends
    Failed (a state that may itself not reach the API: `grd run` then says the same line)."""
    key = report.run_key
    logger.error("benchmark %s: stopped: %s; %s", report.benchmark, reason,
                 _kept(report, f"`grd run SPEC --resume {key}` (or a Retry, or resume_from={key})"))
    return final_state(Status.FAILED, report,
                       f"benchmark {report.benchmark}: the Prefect API stayed unreachable, exit code "
                       f"{report.exit_code}")


def _stopped(report: BenchmarkReport, stop: BaseException, logger: Any) -> State[Any]:
    """A run stopped by a signal ends Cancelled, its message naming what stopped it, with one line saying
    what was kept and how to resume."""
    if isinstance(stop, KeyboardInterrupt):
        cause = "Ctrl-C"
    elif cancel_requested():
        cause = "a cancel (the UI or the API)"
    else:
        cause = f"signal {signal.Signals(report.exit_code - 128).name}"
    retry = f"a Retry of this flow run, or a new run with resume_from={report.run_key},"
    logger.warning("benchmark %s: stopped by %s; %s", report.benchmark, cause, _kept(report, retry))
    message = f"benchmark {report.benchmark}: stopped by {cause}, exit code {report.exit_code}"
    return final_state(Status.CANCELLED, report, message)
