"""The benchmark engine: a run's phases, gates, stops, cleanups and reports, on a runner the edge supplies.

Invariant: the loop is here and only here. A ``Runner`` only runs units of work: ``phase`` runs the phase's
body (this module's, handed to it) as one unit (a Prefect subflow) and gives back the report the body made;
``command`` runs one dispatched ``CommandPlan`` (a Prefect task) and gives back its row. Everything a command
needs travels in its plan entry; nothing is looked up by name or from a context.

Stops: when the runner raises (the SIGTERM of a cancel or of a stopping worker, Ctrl-C, Prefect's backstop),
the run's budget is cancelled (every running command goes down its kill ladder; cleanups are shielded), the
report is written at once with what finished (a second signal may end what follows), then the benchmark's
cleanup runs and the report is written again with it. An interruption that is not a stop (a defect), or a stop
whose next state belongs to the process supervising the run (``stop_is_ours`` False), propagates after the
cleanup.

A lost unit (``LostPhase``: the phase's subflow ended without its report, e.g. its end could not be recorded
because the API was down) keeps every command that finished: its rows come from the run's progress, and
only commands without one are FAILED with the reason. A runner that can start nothing more (``RunnerGone``:
the orchestrator stayed unreachable past its retry window) ends the run there: the interrupted phase as a lost
one, the phases after it FAILED with the reason (commands an earlier attempt completed stay resumed), progress
committed, the benchmark's cleanup run directly in this process (its unit of work cannot be created), and the
report written; ``Finished.gone`` carries the reason for the edge's one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from grd_blocks.orchestration.execute import CommandPlan, execute
from grd_blocks.orchestration.plan import (
    DASK_ENV,
    RAY_ENV,
    PhasePlan,
    PlannedCommand,
    dask_address,
    ray_address,
)
from grd_blocks.orchestration.run import BenchmarkRun, PhaseRun
from grd_blocks.orchestration.scheduler import run_commands
from grd_blocks.orchestration.status import interrupt_exit_code
from grd_blocks.report import BenchmarkReport, CommandReport, CommandRows, PhaseReport, write_report

__all__ = [  # the engine's public interface: all the edge may use of the loop's internals
    "DASK_ENV",
    "RAY_ENV",
    "BenchmarkRun",
    "CommandPlan",
    "Finished",
    "LostPhase",
    "PhasePlan",
    "Runner",
    "RunnerGone",
    "dask_address",
    "execute",
    "ray_address",
    "run_benchmark",
]


class LostPhase(Exception):
    """Raised by ``Runner.phase`` when the phase's unit of work ended without the body's report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RunnerGone(Exception):
    """Raised by a ``Runner`` that can start no more units of work (its orchestrator does not answer)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Runner(Protocol):
    """Where a run's units of work execute (the Prefect edge: a subflow per phase, a task per command)."""

    def phase(
        self, phase: PhasePlan, backstop_s: float | None, body: Callable[[], PhaseReport]
    ) -> PhaseReport:
        """Run ``body`` as ``phase``'s unit of work, stopped by ``backstop_s`` at the latest; its report, or
        ``LostPhase`` when the unit ended without one."""
        ...

    def command(self, plan: CommandPlan, backstop_s: float | None) -> CommandReport:
        """Run one command (``execute(plan)``) as a unit of work, stopped by ``backstop_s`` at the latest."""
        ...


@dataclass(frozen=True)
class Finished:
    """How a run ended: its report, where it was written, the signal that stopped it (None: it ran to its
    end) and why the runner could go no further (``RunnerGone``'s reason; None: it could)."""

    report: BenchmarkReport
    path: Path
    stop: BaseException | None
    gone: str | None = None


def _command(
    run: BenchmarkRun, runner: Runner, phase_run: PhaseRun | None, command: PlannedCommand
) -> CommandReport:
    plan = run.dispatch(phase_run, command)
    seen = run.watch(plan)
    row = runner.command(plan, run.command_backstop(command))
    if not command.cleanup:
        row = run.judge(plan, seen, row)
        run.record(command.phase, row)
    return row


def _phase_body(run: BenchmarkRun, runner: Runner, phase: PhasePlan) -> Callable[[], PhaseReport]:
    def body() -> PhaseReport:
        phase_run = run.begin_phase(phase)
        rows = CommandRows()
        cleanup: CommandReport | None = None
        try:
            rows = run_commands(
                phase.commands,
                start=lambda command: _command(run, runner, phase_run, command),
                gate=phase_run.gate,
                on_interrupt=lambda: run.stop(f"phase {phase.name} was interrupted"),
                max_parallel=phase.max_parallel,
                reuse=lambda command: run.reusable(phase.name, command.name),
                done=lambda command, row: run.observe(phase_run, command, row),
                texts=run.progress.texts,
            )
        finally:
            run.flush_progress()
            if phase.cleanup is not None:
                cleanup = _command(run, runner, phase_run, phase.cleanup)
        return run.phase_report(phase_run, rows, cleanup)

    return body


def run_benchmark(
    run: BenchmarkRun,
    runner: Runner,
    *,
    report_path: Path,
    flow_run_id: str | None = None,
    stop_is_ours: Callable[[], bool] = lambda: True,
) -> Finished:
    """Run every phase of ``run`` on ``runner``, then the benchmark's cleanup; write the report to
    ``report_path`` (module docstring: stops)."""
    phases: list[PhaseReport] = []
    expired = False
    stop: BaseException | None = None
    cleanup: CommandReport | None = None
    gone: str | None = None
    try:
        for number, phase in enumerate(run.plan.phases):
            skip = run.gate.skip()
            if skip is not None:
                expired = expired or skip.budget_expired
                phases.append(run.skipped_phase(phase, skip))
                continue
            try:
                phases.append(runner.phase(phase, run.phase_backstop(phase), _phase_body(run, runner, phase)))
            except LostPhase as lost:
                phases.append(run.lost_phase(phase, lost.reason))
            except RunnerGone as exc:
                gone = exc.reason
                phases.append(run.lost_phase(phase, gone))
                phases += run.unrun_phases(run.plan.phases[number + 1:], gone)
                break
    except BaseException as exc:
        run.stop(f"the run was stopped ({type(exc).__name__})")
        phases += run.stopped_phases(run.plan.phases[len(phases):], type(exc).__name__)
        run.close()  # commits what finished; the report says whether it did (and the exit code: 130/143)
        stopped = run.report(phases, None, flow_run_id, budget_expired=expired, stopped_by=exc)
        write_report(stopped, report_path)
        if interrupt_exit_code(exc) is None or not stop_is_ours():
            raise  # not a stop (a defect), or its next state is not the run's to decide
        stop = exc
    finally:
        run.close()
        if run.plan.cleanup is not None:
            cleanup = (_command(run, runner, None, run.plan.cleanup) if gone is None
                       else execute(run.dispatch(None, run.plan.cleanup)))
    report = run.report(phases, cleanup, flow_run_id, budget_expired=expired, stopped_by=stop)
    return Finished(report, write_report(report, report_path), stop, gone)
