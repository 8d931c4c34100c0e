"""Run one command under its budget and turn what happened into a report row.

Invariant: the command is started with the budget's effective deadline (absolute, monotonic) and its resolved
grace; the status follows the outcome alone: could not start or non-zero exit -> FAILED, killed on its
deadline, exited 124 (it stopped itself for its budget), ended by the deadline's warning signal, or a process
of it created its ``GRD_TIMEOUT_FILE`` (it stopped for its budget under a launcher such as torchrun, which
turns the rank's 124 into 1) -> TIMEOUT (never FAILED), stopped by cancellation -> CANCELLED, exit 0 ->
COMPLETED. A command that created that file and ended with another code than 124, grd's deadline playing no
part, reports exit code 124 and keeps the code it really ended with in ``timeout.launcher_returncode`` and
the row's note. Each attempt's timeout file is a path no other attempt is given, removed once its row is
written, so no attempt sees another's. A row's ``timeout`` block is filled only for TIMEOUT and names the
level of the budget whose deadline was binding. A plan with a Dask target runs on that cluster
(``dask_dispatch``): the same attempt (``run_attempt``) on a worker, the same row built here from its outcome.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from grd_blocks.budget import TIMEOUT_FILE_ENV, Budget, budget_stop_marked
from grd_blocks.budget.stop_file import forget, fresh_timeout_file
from grd_blocks.errors import GrdError
from grd_blocks.orchestration.environment import StoreAccess, command_env
from grd_blocks.orchestration.plan import DaskTarget, RayTarget
from grd_blocks.orchestration.status import EXIT_TIMEOUT, Status
from grd_blocks.process import CommandOutcome, DeadlineWarning, run_command
from grd_blocks.report import CommandReport, TimeoutInfo, ended_with
from grd_blocks.spec import WarnSpec
from grd_blocks.timeline import mark

__all__ = ["CommandPlan", "LineSink", "execute", "not_started", "outcome_row", "run_attempt"]

LineSink = Callable[[str, str], None]


@dataclass(frozen=True)
class CommandPlan:
    """Everything needed to start one command; ``budget`` started when the command was planned."""

    phase: str
    name: str
    run: str | list[str]
    budget: Budget
    grace_s: float
    configured_s: float | None
    run_key: str
    attempt: int
    log_path: str  # a str, as every per-command path: pathlib interns a path's names, see exclusive.claim
    cwd: Path | None = None
    spec_env: Mapping[str, str] = field(default_factory=dict)
    store: StoreAccess | None = None
    parent_env: Mapping[str, str] | None = None  # the environment commands start from (None: os.environ now)
    warn: WarnSpec | None = None  # the signal sent to the tree before its deadline
    earlier_logs: list[str] = field(default_factory=list)  # the logs of its earlier attempts, oldest first
    cleanup: bool = False  # a cleanup: its budget is shielded, so a cancel of the run does not stop it
    dask: DaskTarget | None = None  # the Dask cluster it runs on (None: this machine)
    ray: RayTarget | None = None  # the Ray cluster it runs on (None: this machine)

    @property
    def label(self) -> str:
        """``phase.command`` (``benchmark.command`` for the benchmark's own cleanup)."""
        return f"{self.phase}.{self.name}"

    @property
    def exclusive_key(self) -> str:
        """At most one copy of this command runs per machine (a resumed attempt stops an earlier one)."""
        return f"{self.run_key}/{self.phase}.{self.name}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _killed_by_warning(plan: CommandPlan, outcome: CommandOutcome) -> bool:
    """The deadline's warning signal ended it (it has no handler for it, e.g. it was still starting): the
    deadline stopped it, so it is a timeout, like one that exits 124 on the warning."""
    return (
        plan.warn is not None
        and outcome.warn_sent_s is not None
        and outcome.returncode == -plan.warn.signal
    )


def _relabelled(outcome: CommandOutcome, stop_marked: bool) -> int | None:
    """The code the command ended with when a process of it marked a budget stop but the command did not exit
    124 (a launcher rewrote its ranks' 124, or died of the warning signal its ranks saved on); None when it
    exited 124, grd's deadline stopped it (its ladder's code is the truth) or nothing was marked."""
    if not stop_marked or outcome.timed_out or outcome.returncode == EXIT_TIMEOUT:
        return None
    return outcome.returncode


def outcome_row(
    plan: CommandPlan, outcome: CommandOutcome, granted_s: float, *, stop_marked: bool = False
) -> CommandReport:
    """The report row of ``plan`` after ``run_command`` returned ``outcome``; ``stop_marked``: a process of it
    created its ``GRD_TIMEOUT_FILE`` (it stopped for its budget)."""
    timeout: TimeoutInfo | None = None
    returncode, note = outcome.returncode, outcome.note
    warned_off = _killed_by_warning(plan, outcome)
    launcher_code = _relabelled(outcome, stop_marked)
    if outcome.spawn_error is not None:
        status = Status.FAILED
    elif outcome.cancelled:
        status = Status.CANCELLED
    elif outcome.timed_out or outcome.returncode == EXIT_TIMEOUT or warned_off or stop_marked:
        # 124 is the command saying "my budget ran out" itself (GNU timeout's code; grd's training helpers
        # save a checkpoint and exit 124 before GRD_TIME_LEFT_S runs out): a timeout, never a failure. A
        # launcher (torchrun) turns its ranks' 124 into 1; the timeout file they created still says it.
        status = Status.TIMEOUT
        if launcher_code is not None:
            returncode = EXIT_TIMEOUT
            said = (
                f"it {ended_with(launcher_code)} after a process of it marked a budget stop "
                f"({TIMEOUT_FILE_ENV}): reported as TIMEOUT, exit code {EXIT_TIMEOUT}"
            )
            note = said if note is None else f"{note}; {said}"
        timeout = TimeoutInfo(
            level=plan.budget.binding().level,
            configured_s=plan.configured_s,
            effective_s=None if math.isinf(granted_s) else round(granted_s, 3),
            inherited=plan.budget.inherited(),
            term_sent_s=_round(outcome.term_sent_s),
            kill_sent_s=_round(outcome.kill_sent_s),
            survivors=outcome.survivors,
            warn_sent_s=_round(outcome.warn_sent_s),
            stopped_by=outcome.stopped_by,
            launcher_returncode=launcher_code,
        )
    else:
        status = Status.COMPLETED if outcome.returncode == 0 else Status.FAILED
    return CommandReport(
        name=plan.name,
        status=status,
        returncode=returncode,
        elapsed_s=round(outcome.elapsed_s, 3),
        attempts=plan.attempt,
        stdout_tail=outcome.stdout_tail,
        stderr_tail=outcome.stderr_tail,
        timeout=timeout,
        budget_s=None if math.isinf(granted_s) else round(granted_s, 3),
        reason=outcome.spawn_error or (_cancel_reason(plan) if status is Status.CANCELLED else None),
        log_path=outcome.log_path,
        attempt_logs=[*plan.earlier_logs, *([outcome.log_path] if outcome.log_path else [])],
        note=note,
    )


def _cancel_reason(plan: CommandPlan) -> str | None:
    """Why a cancelled command was stopped: its budget's cancel reason (a run's cancel, on_timeout's stop)."""
    return plan.budget.cancel_reason or None


def not_started(plan: CommandPlan, granted: float, reason: str) -> CommandReport:
    """The row of an attempt that could not start (``reason``: why, naming the input and the fix)."""
    return CommandReport(
        name=plan.name,
        status=Status.FAILED,
        attempts=plan.attempt,
        budget_s=None if math.isinf(granted) else round(granted, 3),
        reason=f"could not start: {reason}",
        log_path=str(plan.log_path),
        attempt_logs=[*plan.earlier_logs, str(plan.log_path)],
    )


def run_attempt(plan: CommandPlan, granted: float, *, on_line: LineSink | None = None,
                parent_env: Mapping[str, str] | None = None) -> tuple[CommandOutcome, bool]:
    """Run ``plan`` here (never on its Dask target) to its end; its outcome and whether a process of it
    created its ``GRD_TIMEOUT_FILE``. ``parent_env``: the environment it starts from (None: the plan's).
    Raises ``GrdError`` or ``OSError`` when it could not start."""
    warn = plan.warn
    timeout_file = fresh_timeout_file()  # a path no other attempt is given: it cannot exist before it starts
    try:
        env = command_env(
            spec_env=plan.spec_env,
            run_key=plan.run_key,
            attempt=plan.attempt,
            time_left_s=granted,
            grace_s=plan.grace_s,
            phase=plan.phase,
            command=plan.name,
            store=plan.store,
            base=parent_env if parent_env is not None else plan.parent_env,
            warn_s=warn.before if warn is not None else None,
            warn_signal=warn.signal if warn is not None else None,
            timeout_file=timeout_file,
        )
        mark("spawn")  # run_command creates the log file's directory
        outcome = run_command(
            plan.run,
            deadline=plan.budget.effective_deadline,
            grace_s=plan.grace_s,
            env=env,
            cwd=plan.cwd,
            log_path=plan.log_path,
            on_line=on_line,
            cancel=plan.budget.cancel_flag(),
            clock=plan.budget.clock,
            warn=None if warn is None else DeadlineWarning(warn.signal, warn.before),
            exclusive=plan.exclusive_key,
        )
        mark("exited")
        return outcome, budget_stop_marked(timeout_file)
    finally:
        forget(timeout_file)


def execute(plan: CommandPlan, *, on_line: LineSink | None = None) -> CommandReport:
    """Run ``plan`` to its end (exit, deadline or its budget's cancellation) and return its row; never raises
    GrdError. A cleanup's budget is shielded: cancelling the run does not reach it. A plan with a Dask or Ray
    target runs on that cluster."""
    if plan.dask is not None:
        from grd_blocks.orchestration.dask_dispatch import dispatch  # distributed: only where it is used

        return dispatch(plan, on_line=on_line)
    if plan.ray is not None:
        from grd_blocks.orchestration.ray_dispatch import dispatch as ray_dispatch  # ray: only where used

        return ray_dispatch(plan, on_line=on_line)
    granted = plan.budget.remaining()
    try:
        outcome, stop_marked = run_attempt(plan, granted, on_line=on_line)
    except (GrdError, OSError) as exc:
        return not_started(plan, granted, str(exc))
    return outcome_row(plan, outcome, granted, stop_marked=stop_marked)
