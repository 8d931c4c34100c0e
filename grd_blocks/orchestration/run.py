"""One benchmark run: the state the flows compose (budgets, gates, progress, logs), bound to the context.

Invariant: budgets are created when their node starts (phase budget at phase start, command budget at command
start), so each node's effective deadline is min(start + timeout, parent's effective deadline); a command
completed by an earlier attempt of the same run key is reused (``resumed: true``), never re-run; every other
command's attempt number is one more than its last committed attempt. The run is reachable from Prefect tasks
and subflows through ``current_run()`` (a context variable), so flow and task parameters stay plain names.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grd_blocks.budget import Budget, Clock
from grd_blocks.errors import UsageError
from grd_blocks.orchestration import planning
from grd_blocks.orchestration.environment import StoreAccess
from grd_blocks.orchestration.execute import CommandPlan
from grd_blocks.orchestration.policy import PhaseGate, RunGate, Skip
from grd_blocks.orchestration.progress import ProgressLog, ProgressPrefix
from grd_blocks.orchestration.scheduler import skipped_row
from grd_blocks.orchestration.status import Status, exit_code, interrupt_exit_code, rollup
from grd_blocks.report import BenchmarkReport, CommandReport, PhaseReport, ProgressInfo
from grd_blocks.spec import BenchmarkSpec, CommandSpec, PhaseSpec, resolve_command

__all__ = ["BenchmarkRun", "PhaseRun", "bind_run", "current_run"]

Logger = logging.Logger | logging.LoggerAdapter[Any]
_CURRENT: contextvars.ContextVar[BenchmarkRun] = contextvars.ContextVar("grd_benchmark_run")


@dataclass
class PhaseRun:
    """A started phase: its spec, budget and gate."""

    spec: PhaseSpec
    budget: Budget
    gate: PhaseGate


@dataclass
class BenchmarkRun:
    """The live state of one run of ``spec`` under ``run_key``."""

    spec: BenchmarkSpec
    run_key: str
    logs_dir: Path
    timeouts: bool = True
    limit_s: float | None = None  # an approved long-run limit capping the benchmark's budget
    store: StoreAccess | None = None
    progress_root: ProgressPrefix | None = None
    resume_from: str | None = None  # the run key a resume was asked for (nothing under it: warned, see below)
    clock: Clock = time.monotonic
    logger: Logger = field(default_factory=lambda: logging.getLogger("grd"))
    cancel: threading.Event = field(default_factory=threading.Event)
    budget: Budget = field(init=False)
    gate: RunGate = field(init=False)
    progress: ProgressLog = field(init=False)
    active: dict[str, PhaseRun] = field(init=False, default_factory=dict)
    parent_env: dict[str, str] = field(init=False)
    _commands: dict[tuple[str, str], CommandSpec] = field(init=False, default_factory=dict)
    _previous: dict[str, CommandReport | None] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _resume_note: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.timeouts = self.timeouts and self.spec.timeouts
        self.budget = planning.benchmark_budget(self.spec, timeouts=self.timeouts, clock=self.clock,
                                                limit_s=self.limit_s)
        self.gate = RunGate(self.budget, self.cancel)
        self.progress = ProgressLog(self.progress_root, logger=self.logger)
        self.parent_env = dict(os.environ)  # read once: every command starts from the run's environment
        if self.resume_from is not None and self.progress.earlier_snapshot() is False:
            self._resume_note = (
                f"resume of run key {self.resume_from!r} asked, but no progress was ever committed under it "
                "(no command of an earlier attempt finished, or the key is mistyped): every command runs"
            )
            self.logger.warning("%s", self._resume_note)
        for phase in self.spec.phases:
            for command in [*phase.commands, *([phase.cleanup] if phase.cleanup else [])]:
                self._commands.setdefault((phase.name, command.name), command)

    # --- lookup -----------------------------------------------------------------------------------------

    def phase_spec(self, name: str) -> PhaseSpec:
        """The phase called ``name``."""
        for phase in self.spec.phases:
            if phase.name == name:
                return phase
        raise UsageError(f"benchmark {self.spec.name!r} has no phase {name!r}; phases: "
                         f"{', '.join(p.name for p in self.spec.phases)}")

    def command_spec(self, phase: PhaseSpec, name: str) -> CommandSpec:
        """The command (or cleanup) of ``phase`` called ``name``."""
        command = self._commands.get((phase.name, name))
        if command is not None and any(p is phase for p in self.spec.phases):
            return command
        for command in [*phase.commands, *([phase.cleanup] if phase.cleanup else [])]:
            if command.name == name:
                return command
        raise UsageError(f"phase {phase.name!r} has no command {name!r}")

    # --- progress ---------------------------------------------------------------------------------------

    def _last(self, phase: str, command: str) -> CommandReport | None:
        key = f"{phase}.{command}"
        with self._lock:
            if key in self._previous:
                return self._previous[key]
        row = self.progress.previous(phase, command)
        with self._lock:
            self._previous[key] = row
        return row

    def reusable(self, phase: str, command: str) -> CommandReport | None:
        """The row of ``phase.command`` if an earlier attempt of this run key completed it."""
        row = self._last(phase, command)
        if row is None or row.status is not Status.COMPLETED:
            return None
        return row.model_copy(update={"resumed": True})

    def attempt(self, phase: str, command: str) -> int:
        """The attempt number the next start of ``phase.command`` is."""
        row = self._last(phase, command)
        return 1 if row is None else row.attempts + 1

    def flush_progress(self) -> None:
        """Wait until every finished command's row is committed to the store."""
        self.progress.flush()

    def close(self) -> None:
        """Commit what is pending and stop the progress writer (end of the run)."""
        self.progress.close()

    def observe(self, phase_run: PhaseRun, command: CommandSpec, row: CommandReport) -> None:
        """Apply ``command``'s on_timeout policy to its phase (and run) after it ended with ``row``."""
        policy = resolve_command(self.spec, phase_run.spec, command).on_timeout
        phase_run.gate.observe(phase_run.spec.name, command.name, row.status, policy)

    def completed_earlier(self) -> list[str]:
        """``phase.command`` of every command an earlier attempt of this run key completed (to be skipped)."""
        return [f"{phase.name}.{command.name}" for phase in self.spec.phases for command in phase.commands
                if self.reusable(phase.name, command.name) is not None]

    def record(self, phase: str, row: CommandReport) -> None:
        """Commit a finished command's row (not reused or skipped ones)."""
        if not row.resumed:
            self.progress.record(phase, row)

    # --- planning ---------------------------------------------------------------------------------------

    def begin_phase(self, phase: PhaseSpec) -> PhaseRun:
        """Start ``phase`` now: its budget is a child of the benchmark's."""
        budget = planning.phase_budget(self.budget, phase, timeouts=self.timeouts)
        phase_run = PhaseRun(spec=phase, budget=budget, gate=self.gate.phase(budget))
        with self._lock:
            self.active[phase.name] = phase_run
        return phase_run

    def active_phase(self, name: str) -> PhaseRun:
        """The started phase called ``name``."""
        with self._lock:
            phase_run = self.active.get(name)
        if phase_run is None:
            raise UsageError(f"phase {name!r} of benchmark {self.spec.name!r} has not started; "
                             "commands run only inside their phase's flow")
        return phase_run

    def _plan(self, label: str, command: CommandSpec, budget: Budget, phase: PhaseSpec | None,
              attempt: int, earlier_logs: list[str]) -> CommandPlan:
        resolved = resolve_command(self.spec, phase, command)
        cwd = None
        if command.cwd is not None:
            cwd = Path(command.cwd) if Path(command.cwd).is_absolute() else self.spec.base_dir / command.cwd
        return CommandPlan(
            phase=label,
            name=command.name,
            run=command.run if isinstance(command.run, str) else list(command.run),
            budget=budget,
            grace_s=resolved.grace_s,
            configured_s=budget.configured_s,
            run_key=self.run_key,
            attempt=attempt,
            log_path=_attempt_log(self.logs_dir, f"{label}.{command.name}", attempt),
            cwd=cwd,
            spec_env=dict(command.env),
            store=self.store,
            parent_env=self.parent_env,
            warn=resolved.warn if self.timeouts else None,
            earlier_logs=earlier_logs,
        )

    def plan_command(self, phase_run: PhaseRun, command: CommandSpec) -> CommandPlan:
        """Plan ``command`` to start now, its budget a child of its phase's."""
        budget = planning.command_budget(phase_run.budget, self.spec, phase_run.spec, command,
                                         timeouts=self.timeouts)
        phase = phase_run.spec.name
        last = self._last(phase, command.name)
        earlier = [] if last is None else last.attempt_logs or ([last.log_path] if last.log_path else [])
        return self._plan(phase, command, budget, phase_run.spec, self.attempt(phase, command.name),
                          list(earlier))

    def plan_cleanup(self, phase_run: PhaseRun | None, command: CommandSpec) -> CommandPlan:
        """Plan a cleanup to start now under its own shielded budget (of a phase, or the benchmark's)."""
        parent = phase_run.budget if phase_run is not None else self.budget
        budget = planning.cleanup_budget(parent, command, timeouts=self.timeouts)
        label = phase_run.spec.name if phase_run is not None else self.spec.name
        return self._plan(label, command, budget, phase_run.spec if phase_run else None, 1, [])

    def cleanup_backstop(self, phase: PhaseSpec | None, command: CommandSpec) -> float | None:
        """Prefect ``timeout_seconds`` for a cleanup task (``phase`` None: the benchmark's cleanup)."""
        bound = planning.cleanup_timeout(command, timeouts=self.timeouts)
        return planning.backstop_seconds(bound, resolve_command(self.spec, phase, command).grace_s)

    def phase_backstop(self, phase: PhaseSpec) -> float | None:
        """Prefect ``timeout_seconds`` for a phase subflow."""
        return planning.phase_backstop_seconds(self.spec, phase, self.budget, timeouts=self.timeouts)

    # --- reports ----------------------------------------------------------------------------------------

    def phase_report(self, phase_run: PhaseRun, rows: list[CommandReport],
                     cleanup: CommandReport | None) -> PhaseReport:
        """The report of a phase that ran."""
        statuses = [r.status for r in rows] + ([cleanup.status] if cleanup is not None else [])
        return PhaseReport(
            name=phase_run.spec.name,
            status=rollup(statuses, budget_expired=phase_run.gate.budget_expired),
            elapsed_s=round(self.clock() - phase_run.budget.started_at, 3),
            timeout_s=phase_run.spec.timeout if self.timeouts else None,
            commands=rows,
            cleanup=cleanup,
        )

    def skipped_phase(self, phase: PhaseSpec, skip: Skip) -> PhaseReport:
        """The report of a phase that never started."""
        return PhaseReport(
            name=phase.name,
            status=skip.status,
            timeout_s=phase.timeout if self.timeouts else None,
            commands=[self.reusable(phase.name, c.name) or skipped_row(c.name, skip) for c in phase.commands],
        )

    def lost_phase(self, name: str, reason: str) -> PhaseReport:
        """The report of a phase whose flow ended without one (``reason`` says how): every command
        CANCELLED when the run is being cancelled, else FAILED."""
        status = Status.CANCELLED if self.cancel.is_set() else Status.FAILED
        commands = self.phase_spec(name).commands
        rows = [CommandReport(name=c.name, status=status, reason=reason) for c in commands]
        return PhaseReport(name=name, status=status, commands=rows)

    def stopped_phases(self, phases: list[PhaseSpec], stopped_by: str) -> list[PhaseReport]:
        """Rows for the phases a stopped run did not finish (the interrupted one first; ``stopped_by``
        names what stopped it): what finished keeps its result, everything else is CANCELLED."""
        reason = f"the flow run was stopped ({stopped_by}) before this command finished"
        return [
            PhaseReport(
                name=phase.name,
                status=Status.CANCELLED,
                commands=[
                    self.progress.finished(phase.name, command.name)
                    or CommandReport(name=command.name, status=Status.CANCELLED, reason=reason)
                    for command in phase.commands
                ],
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
            benchmark=self.spec.name,
            status=status,
            run_key=self.run_key,
            flow_run_id=flow_run_id,
            elapsed_s=round(self.clock() - self.budget.started_at, 3),
            exit_code=interrupted if interrupted is not None else exit_code(status),
            timeouts=self.timeouts,
            spec=str(self.spec.source),
            phases=phases,
            cleanup=cleanup,
            progress=ProgressInfo(committed=committed, error=error, note=self._resume_note),
        )


def _attempt_log(logs_dir: Path, stem: str, attempt: int) -> Path:
    """``<stem>.attempt-<N>.log`` for this attempt, or the next N whose file does not exist yet: an attempt
    never overwrites an earlier one's log (a cleanup runs in every attempt; a row may have been lost)."""
    while True:
        path = logs_dir / f"{stem}.attempt-{attempt}.log"
        if not path.exists():
            return path
        attempt += 1


@contextlib.contextmanager
def bind_run(run: BenchmarkRun) -> Iterator[BenchmarkRun]:
    """Make ``run`` the current run for this context (and copies of it: worker threads, subflows)."""
    token = _CURRENT.set(run)
    try:
        yield run
    finally:
        _CURRENT.reset(token)


def current_run() -> BenchmarkRun:
    """The run bound by ``bind_run``; a ``UsageError`` outside one."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise UsageError(
            "no grd benchmark run is bound here: grd's phase and command flows run only inside the benchmark "
            "flow (grd_blocks.prefect_edge.benchmark_flow) or a `with bind_run(run):` block"
        ) from None
