"""One benchmark run: the state the engine composes (plan, budgets, gates, progress, logs) and its reports.

Invariant: budgets are created when their node starts (phase budget at phase start, command budget at command
start), so each node's effective deadline is min(start + timeout, parent's effective deadline); a command
completed by an earlier attempt of the same run key is reused (``resumed: true``), never re-run; every other
command's attempt number is one more than its last committed attempt. Stopping the run is cancelling its
budget (``stop()``): every unshielded budget under it, so every running command, sees it; cleanups run under
shielded budgets and are not stopped. Nothing here is looked up by name from a context: the engine
(benchmark.py) hands each step the plan entry it works on.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from grd_blocks.budget import Budget, Clock
from grd_blocks.orchestration import checkpoint_watch, planning
from grd_blocks.orchestration.environment import StoreAccess
from grd_blocks.orchestration.execute import CommandPlan
from grd_blocks.orchestration.plan import BenchmarkPlan, PhasePlan, PlannedCommand, plan_benchmark
from grd_blocks.orchestration.policy import PhaseGate, RunGate, Skip
from grd_blocks.orchestration.progress import ProgressLog, ProgressPrefix
from grd_blocks.orchestration.scheduler import skipped_row
from grd_blocks.orchestration.status import Status, exit_code, interrupt_exit_code, rollup
from grd_blocks.report import BenchmarkReport, CommandReport, CommandRows, PhaseReport, ProgressInfo
from grd_blocks.spec import BenchmarkSpec

__all__ = ["BenchmarkRun", "PhaseRun"]

Logger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass
class PhaseRun:
    """A started phase: its plan, budget and gate."""

    phase: PhasePlan
    budget: Budget
    gate: PhaseGate


@dataclass
class BenchmarkRun:
    """The live state of one run of ``spec`` under ``run_key``."""

    spec: InitVar[BenchmarkSpec]  # planned at init; the run keeps its plan, not the spec's models
    run_key: str
    logs_dir: Path
    timeouts: bool = True
    limit_s: float | None = None  # an approved long-run limit capping the benchmark's budget
    store: StoreAccess | None = None
    progress_root: ProgressPrefix | None = None
    resume_from: str | None = None  # the run key a resume was asked for (nothing under it: warned, see below)
    command_prefixes: checkpoint_watch.CommandPrefixes | None = None  # each command's checkpoints, to watch
    dask: str | None = None  # the run's Dask scheduler for phases whose spec names no runner (plan.py)
    ray: str | None = None  # the run's Ray cluster for them, when no Dask scheduler is set (plan.py)
    clock: Clock = time.monotonic
    logger: Logger = field(default_factory=lambda: logging.getLogger("grd"))
    plan: BenchmarkPlan = field(init=False)
    budget: Budget = field(init=False)
    gate: RunGate = field(init=False)
    progress: ProgressLog = field(init=False)
    parent_env: dict[str, str] = field(init=False)
    _previous: dict[str, CommandReport] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _resume_note: str | None = field(init=False, default=None)

    def __post_init__(self, spec: BenchmarkSpec) -> None:
        self.plan = plan_benchmark(spec, timeouts=self.timeouts, dask=self.dask, ray=self.ray)
        self.timeouts = self.plan.timeouts
        self.budget = planning.benchmark_budget(self.plan, clock=self.clock, limit_s=self.limit_s)
        self.gate = RunGate(self.budget)
        self.progress = ProgressLog(self.progress_root, logger=self.logger)
        self.parent_env = dict(os.environ)  # read once: every command starts from the run's environment
        if self.resume_from is not None and self.progress.earlier_snapshot() is False:
            self._resume_note = (
                f"resume of run key {self.resume_from!r} asked, but no progress was ever committed under it "
                "(no command of an earlier attempt finished, or the key is mistyped): every command runs"
            )
            self.logger.warning("%s", self._resume_note)

    def stop(self, reason: str) -> None:
        """Stop the run: cancel its budget (running commands go down their kill ladders; nothing else
        starts; cleanups, shielded, still run)."""
        self.budget.cancel(reason)

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called."""
        return self.budget.cancelled

    # --- progress ---------------------------------------------------------------------------------------

    def _last(self, phase: str, command: str) -> CommandReport | None:
        key = f"{phase}.{command}"
        with self._lock:
            if key in self._previous:
                return self._previous[key]
        row = self.progress.previous(phase, command)
        if row is not None:  # a miss costs a dict lookup: not kept (a fresh run would keep one per command)
            with self._lock:
                self._previous[key] = row
        return row

    def reusable(self, phase: str, command: str) -> CommandReport | None:
        """The row of ``phase.command`` if an earlier attempt of this run key completed it."""
        row = self._last(phase, command)
        if row is None or row.status is not Status.COMPLETED:
            return None
        return row.model_copy(update={"resumed": True})

    def flush_progress(self) -> None:
        """Wait until every finished command's row is committed to the store."""
        self.progress.flush()

    def close(self) -> None:
        """Commit what is pending and stop the progress writer (end of the run); close the run's Dask
        clients (cleanups run on this machine)."""
        self.progress.close()
        if any(phase.dask is not None for phase in self.plan.phases):
            from grd_blocks.orchestration.dask_dispatch import close_dispatchers  # imports distributed

            close_dispatchers()
        if any(phase.ray is not None for phase in self.plan.phases):
            from grd_blocks.orchestration.ray_dispatch import close_dispatchers as close_ray  # imports ray

            close_ray()

    def observe(self, phase_run: PhaseRun, command: PlannedCommand, row: CommandReport) -> None:
        """Apply ``command``'s on_timeout policy to its phase (and run) after it ended with ``row``."""
        phase_run.gate.observe(command.phase, command.name, row.status, command.on_timeout)

    def completed_earlier(self) -> list[str]:
        """``phase.command`` of every command an earlier attempt of this run key completed (to be skipped)."""
        return [command.label for phase in self.plan.phases for command in phase.commands
                if self.reusable(phase.name, command.name) is not None]

    def record(self, phase: str, row: CommandReport) -> None:
        """Commit a finished command's row (not reused or skipped ones)."""
        if not row.resumed:
            self.progress.record(phase, row)

    # --- planning ---------------------------------------------------------------------------------------

    def begin_phase(self, phase: PhasePlan) -> PhaseRun:
        """Start ``phase`` now: its budget is a child of the benchmark's."""
        budget = planning.phase_budget(self.budget, phase)
        return PhaseRun(phase=phase, budget=budget, gate=self.gate.phase(budget))

    def dispatch(self, phase_run: PhaseRun | None, command: PlannedCommand) -> CommandPlan:
        """The entry that starts ``command`` now: its budget a child of its phase's (``phase_run`` None: of
        the benchmark's, for the benchmark's cleanup), shielded for a cleanup; its attempt number and the
        logs of its earlier attempts."""
        budget = planning.command_budget(phase_run.budget if phase_run is not None else self.budget, command)
        attempt, earlier = 1, []
        if not command.cleanup:
            last = self._last(command.phase, command.name)
            attempt = 1 if last is None else last.attempts + 1
            earlier = [] if last is None else last.attempt_logs or ([last.log_path] if last.log_path else [])
        return CommandPlan(
            phase=command.phase,
            name=command.name,
            run=command.run if isinstance(command.run, str) else list(command.run),
            budget=budget,
            grace_s=command.grace_s,
            configured_s=budget.configured_s,
            run_key=self.run_key,
            attempt=attempt,
            log_path=_attempt_log(self.logs_dir, command.label, attempt),
            cwd=command.cwd,
            spec_env=dict(command.env),
            store=self.store,
            parent_env=self.parent_env,
            warn=command.warn,
            earlier_logs=list(earlier),
            cleanup=command.cleanup,
            dask=command.dask,
            ray=command.ray,
        )

    def watch(self, plan: CommandPlan) -> checkpoint_watch.Watch | None:
        """Its prefix's newest checkpoint before ``plan`` starts (checkpoint_watch.py), for a command that can
        be stopped by a deadline; None for a cleanup, a command without deadline or a run without a store."""
        if self.command_prefixes is None or plan.cleanup or math.isinf(plan.budget.effective_deadline):
            return None
        return checkpoint_watch.watch(self.command_prefixes, plan.label)

    def judge(self, plan: CommandPlan, seen: checkpoint_watch.Watch | None,
              row: CommandReport) -> CommandReport:
        """``row`` with what its attempt committed when it did not complete; a TIMEOUT that committed nothing
        is a WARNING line in the run's log and its row's note (checkpoint_watch.py)."""
        if seen is None or row.resumed or row.status in (Status.COMPLETED, Status.SKIPPED):
            return row
        judged, line = checkpoint_watch.judge(seen, row, self._last(plan.phase, plan.name), phase=plan.phase)
        if line is not None:
            self.logger.warning("%s", line)
        return judged

    def command_backstop(self, command: PlannedCommand) -> float | None:
        """Prefect ``timeout_seconds`` for a cleanup task (commands get none: grd bounds them itself)."""
        return planning.backstop_seconds(command.timeout_s, command.grace_s) if command.cleanup else None

    def phase_backstop(self, phase: PhasePlan) -> float | None:
        """Prefect ``timeout_seconds`` for a phase subflow."""
        return planning.phase_backstop_seconds(phase, self.budget)

    # --- reports ----------------------------------------------------------------------------------------

    def phase_report(self, phase_run: PhaseRun, rows: CommandRows,
                     cleanup: CommandReport | None) -> PhaseReport:
        """The report of a phase that ran."""
        statuses = [r.status for r in rows] + ([cleanup.status] if cleanup is not None else [])
        return PhaseReport(
            name=phase_run.phase.name,
            status=rollup(statuses, budget_expired=phase_run.gate.budget_expired),
            elapsed_s=round(self.clock() - phase_run.budget.started_at, 3),
            timeout_s=phase_run.phase.timeout_s,
            commands=rows,
            cleanup=cleanup,
        )

    def skipped_phase(self, phase: PhasePlan, skip: Skip) -> PhaseReport:
        """The report of a phase that never started."""
        return PhaseReport(
            name=phase.name,
            status=skip.status,
            timeout_s=phase.timeout_s,
            commands=CommandRows(self.reusable(phase.name, c.name) or skipped_row(c.name, skip)
                                 for c in phase.commands),
        )

    def lost_phase(self, phase: PhasePlan, reason: str) -> PhaseReport:
        """The report of a phase whose flow ended without one (``reason`` says how): every command that
        finished keeps its row (from progress: recorded by this attempt, or completed by an earlier one);
        the others are CANCELLED when the run is being stopped, else FAILED, with ``reason``."""
        lost = Status.CANCELLED if self.stopped else Status.FAILED
        rows = [self._kept(phase.name, c.name) or CommandReport(name=c.name, status=lost, reason=reason)
                for c in phase.commands]
        return PhaseReport(name=phase.name, status=rollup([row.status for row in rows]),
                           commands=CommandRows(rows))

    def unrun_phases(self, phases: tuple[PhasePlan, ...], reason: str) -> list[PhaseReport]:
        """Reports of phases that could not start (``reason``: why): FAILED, except commands an earlier
        attempt completed (resumed)."""
        why = f"not started: {reason}"
        reports = []
        for phase in phases:
            rows = [self.reusable(phase.name, c.name)
                    or CommandReport(name=c.name, status=Status.FAILED, reason=why) for c in phase.commands]
            status = rollup([row.status for row in rows])
            reports.append(PhaseReport(name=phase.name, status=status, commands=CommandRows(rows)))
        return reports

    def _kept(self, phase: str, command: str) -> CommandReport | None:
        """The row this attempt recorded for ``phase.command``, else an earlier attempt's completed one."""
        return self.progress.finished(phase, command) or self.reusable(phase, command)

    def stopped_phases(self, phases: tuple[PhasePlan, ...], stopped_by: str) -> list[PhaseReport]:
        """Rows for the phases a stopped run did not finish (the interrupted one first; ``stopped_by``
        names what stopped it): what finished keeps its result, everything else is CANCELLED."""
        reason = f"the flow run was stopped ({stopped_by}) before this command finished"
        return [
            PhaseReport(
                name=phase.name,
                status=Status.CANCELLED,
                commands=CommandRows(
                    self.progress.finished(phase.name, command.name)
                    or CommandReport(name=command.name, status=Status.CANCELLED, reason=reason)
                    for command in phase.commands
                ),
            )
            for phase in phases
        ]

    def report(self, phases: list[PhaseReport], cleanup: CommandReport | None,
               flow_run_id: str | None, *, budget_expired: bool = False,
               stopped_by: BaseException | None = None) -> BenchmarkReport:
        """The whole run's report (after ``close()``, so that its progress outcome is known).

        Lost progress (a result that never reached the store) makes the run FAILED, exit code 1, whatever
        the commands did: a resume would run them again. A run ``stopped_by`` a signal (Ctrl-C, SIGTERM)
        reports the exit code `grd run` exits with: 130 or 143."""
        statuses = [p.status for p in phases] + ([cleanup.status] if cleanup is not None else [])
        status = rollup(statuses, budget_expired=budget_expired)
        committed, error = self.progress.outcome()
        if not committed:
            status = Status.FAILED
        interrupted = interrupt_exit_code(stopped_by) if stopped_by is not None else None
        return BenchmarkReport(
            benchmark=self.plan.name,
            status=status,
            run_key=self.run_key,
            flow_run_id=flow_run_id,
            elapsed_s=round(self.clock() - self.budget.started_at, 3),
            exit_code=interrupted if interrupted is not None else exit_code(status),
            timeouts=self.timeouts,
            spec=self.plan.source,
            phases=phases,
            cleanup=cleanup,
            progress=ProgressInfo(committed=committed, error=error, note=self._resume_note),
        )


def _attempt_log(logs_dir: Path, stem: str, attempt: int) -> str:
    """``<stem>.attempt-<N>.log`` for this attempt, or the next N whose file does not exist yet: an attempt
    never overwrites an earlier one's log (a cleanup runs in every attempt; a row may have been lost)."""
    while True:
        path = os.path.join(logs_dir, f"{stem}.attempt-{attempt}.log")  # a str: a Path interns its name
        if not os.path.exists(path):
            return path
        attempt += 1
