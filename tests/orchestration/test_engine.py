"""The benchmark engine without Prefect: a runner that runs each unit in place shows that the loop, the stops
and the plan are the core's own; each command is resolved once; a plan entry runs in another process."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.orchestration import plan as plan_module
from grd_blocks.orchestration.benchmark import (
    BenchmarkRun,
    CommandPlan,
    LostPhase,
    PhasePlan,
    RunnerGone,
    execute,
    run_benchmark,
)
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CommandReport, PhaseReport
from grd_blocks.spec import parse_spec

SPEC = """
name: engine
timeout: 60s
defaults: {timeout: 20s, grace: 1s}
phases:
  - name: first
    commands:
      - {name: a, run: "echo a"}
      - {name: b, run: "echo left=$GRD_TIME_LEFT_S", timeout: 5s}
    cleanup: {name: tidy, run: "true"}
  - name: second
    max_parallel: 2
    commands:
      - {name: c, run: "true"}
      - {name: d, run: "true"}
cleanup: {name: final, run: "true"}
"""


STOPPED = """
name: stopped
phases:
  - name: only
    commands:
      - {name: long, run: "sleep 30"}
      - {name: never, run: "true"}
    cleanup: {name: tidy, run: "true"}
cleanup: {name: final, run: "true"}
"""


class InPlace:
    """Runs every unit where it is called. ``lose``: that phase's unit ends without a report (``lose_end``:
    after its body ran; ``gone``: the runner can start nothing from that phase on). ``interrupt``:
    that phase's body runs in a thread and, once a command of it is running, the caller's thread is
    interrupted (as a SIGTERM or Ctrl-C interrupts the flow's main thread)."""

    def __init__(self, interrupt: str | None = None, lose: str | None = None, lose_end: str | None = None,
                 gone: str | None = None) -> None:
        self.interrupt, self.lose, self.lose_end, self.gone = interrupt, lose, lose_end, gone
        self.dispatched: list[CommandPlan] = []
        self.rows: dict[str, CommandReport] = {}
        self.running = threading.Event()
        self.body: threading.Thread | None = None

    def phase(
        self, phase: PhasePlan, backstop_s: float | None, body: Callable[[], PhaseReport]
    ) -> PhaseReport:
        if phase.name == self.lose:
            raise LostPhase("the unit ended without a report")
        if phase.name == self.gone:
            raise RunnerGone("the orchestrator does not answer")
        if phase.name == self.lose_end:
            body()  # every command ran; only the unit's end could not be recorded
            raise LostPhase("the unit's end could not be recorded")
        if phase.name != self.interrupt:
            return body()
        self.body = threading.Thread(target=body)
        self.body.start()
        assert self.running.wait(30)
        raise KeyboardInterrupt

    def command(self, plan: CommandPlan, backstop_s: float | None) -> CommandReport:
        self.dispatched.append(plan)
        self.running.set()
        self.rows[plan.label] = row = execute(plan)
        return row


def _run(tmp_path: Path) -> BenchmarkRun:
    return BenchmarkRun(spec=parse_spec(SPEC), run_key="engine-1", logs_dir=tmp_path / "logs")


def test_the_engine_runs_phases_cleanups_and_report_on_a_runner_that_knows_no_loop(tmp_path: Path) -> None:
    runner = InPlace()
    finished = run_benchmark(_run(tmp_path), runner, report_path=tmp_path / "report.json")
    report = finished.report
    assert finished.stop is None and report.status is Status.COMPLETED and report.exit_code == 0
    assert [p.name for p in report.phases] == ["first", "second"]
    assert [r.name for r in report.phases[0].commands] == ["a", "b"] and report.phases[0].cleanup is not None
    assert report.cleanup is not None and report.cleanup.status is Status.COMPLETED
    assert finished.path == tmp_path / "report.json" and finished.path.exists()
    assert sorted(p.label for p in runner.dispatched) == [
        "engine.final", "first.a", "first.b", "first.tidy", "second.c", "second.d"]
    b = next(p for p in runner.dispatched if p.label == "first.b")
    assert b.budget.configured_s == 5 and b.budget.effective_deadline <= b.budget.started_at + 5


def test_each_command_is_resolved_once_for_the_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = plan_module.resolve_command

    def counting(spec, phase, command):  # type: ignore[no-untyped-def]
        calls.append(command.name)
        return real(spec, phase, command)

    monkeypatch.setattr(plan_module, "resolve_command", counting)
    run_benchmark(_run(tmp_path), InPlace(), report_path=tmp_path / "report.json")
    assert sorted(calls) == ["a", "b", "c", "d", "final", "tidy"]


def test_a_run_keeps_its_plan_not_its_specs_models(tmp_path: Path) -> None:
    spec = parse_spec(SPEC)
    held = weakref.ref(spec)
    run = BenchmarkRun(spec=spec, run_key="engine-1", logs_dir=tmp_path / "logs")
    del spec
    gc.collect()
    assert held() is None  # a 10,000-command spec's models are some 7 MB the run no longer needs
    report = run_benchmark(run, InPlace(), report_path=tmp_path / "report.json").report
    assert report.benchmark == "engine" and report.status is Status.COMPLETED


def test_a_stop_cancels_the_running_command_through_its_budget_and_still_runs_the_cleanups(
    tmp_path: Path,
) -> None:
    runner = InPlace(interrupt="only")
    run = BenchmarkRun(spec=parse_spec(STOPPED), run_key="stopped-1", logs_dir=tmp_path / "logs")
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(run, runner, report_path=tmp_path / "report.json", stop_is_ours=lambda: False)
    assert runner.body is not None
    runner.body.join(30)
    assert not runner.body.is_alive()
    long = runner.rows["only.long"]
    assert long.status is Status.CANCELLED and long.elapsed_s < 25  # stopped, not waited for
    assert run.stopped and run.budget.cancel_reason == "the run was stopped (KeyboardInterrupt)"
    assert "stopped.final" in runner.rows and runner.rows["stopped.final"].status is Status.COMPLETED
    assert "only.tidy" in runner.rows and runner.rows["only.tidy"].status is Status.COMPLETED  # shielded
    assert "only.never" not in runner.rows
    written = (tmp_path / "report.json").read_text()
    assert '"status": "CANCELLED"' in written and '"exit_code": 130' in written


def test_a_stop_the_run_owns_ends_with_a_report_naming_it(tmp_path: Path) -> None:
    runner = InPlace(interrupt="only")
    run = BenchmarkRun(spec=parse_spec(STOPPED), run_key="stopped-2", logs_dir=tmp_path / "logs")
    finished = run_benchmark(run, runner, report_path=tmp_path / "r.json")
    assert runner.body is not None
    runner.body.join(30)
    assert isinstance(finished.stop, KeyboardInterrupt) and finished.report.exit_code == 130
    assert finished.report.phases[0].status is Status.CANCELLED and finished.report.cleanup is not None


def test_a_phase_whose_unit_ended_without_a_report_fails_its_commands_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    finished = run_benchmark(_run(tmp_path), InPlace(lose="first"), report_path=tmp_path / "r.json")
    first, second = finished.report.phases
    assert first.status is Status.FAILED and {r.reason for r in first.commands} == {
        "the unit ended without a report"}
    assert second.status is Status.COMPLETED and finished.report.status is Status.FAILED


def _with_progress(tmp_path: Path, run_key: str = "engine-1") -> BenchmarkRun:
    store = CheckpointEngine(str(tmp_path / "store"))
    return BenchmarkRun(spec=parse_spec(SPEC), run_key=run_key, logs_dir=tmp_path / "logs",
                        progress_root=store.run(run_key).child("progress"))


def test_a_phase_that_ran_but_lost_its_unit_s_end_keeps_every_finished_command_s_row(tmp_path: Path) -> None:
    runner = InPlace(lose_end="first")
    finished = run_benchmark(_with_progress(tmp_path), runner, report_path=tmp_path / "r.json")
    first, second = finished.report.phases
    assert [(r.name, r.status) for r in first.commands] == [("a", Status.COMPLETED), ("b", Status.COMPLETED)]
    assert [r.returncode for r in first.commands] == [runner.rows["first.a"].returncode,
                                                      runner.rows["first.b"].returncode]
    assert first.status is Status.COMPLETED and second.status is Status.COMPLETED
    assert finished.report.status is Status.COMPLETED and finished.report.exit_code == 0


def test_a_runner_that_can_start_nothing_more_ends_the_run_with_progress_committed_and_the_cleanup_run(
    tmp_path: Path,
) -> None:
    runner = InPlace(gone="second")
    finished = run_benchmark(_with_progress(tmp_path), runner, report_path=tmp_path / "r.json")
    report = finished.report
    first, second = report.phases
    assert finished.gone == "the orchestrator does not answer" and finished.stop is None
    assert first.status is Status.COMPLETED
    assert second.status is Status.FAILED and {r.reason for r in second.commands} == {
        "the orchestrator does not answer"}
    assert "engine.final" not in runner.rows  # not through the runner: it can start nothing ...
    assert report.cleanup is not None and report.cleanup.status is Status.COMPLETED  # ... run in place
    assert report.status is Status.FAILED and report.exit_code == 1 and report.progress is not None
    assert report.progress.committed
    # a resume skips what the first attempt completed and runs the rest
    again = InPlace()
    resumed = run_benchmark(_with_progress(tmp_path), again, report_path=tmp_path / "r2.json").report
    assert sorted(label for label in again.rows if not label.endswith(("tidy", "final"))) == [
        "second.c", "second.d"]
    assert all(r.resumed for r in resumed.phases[0].commands) and resumed.status is Status.COMPLETED


def test_phases_after_the_runner_went_away_are_failed_except_what_an_earlier_attempt_completed(
    tmp_path: Path,
) -> None:
    run_benchmark(_with_progress(tmp_path), InPlace(), report_path=tmp_path / "r.json")  # completes all
    report = run_benchmark(_with_progress(tmp_path), InPlace(gone="first"),
                           report_path=tmp_path / "r2.json").report
    assert all(r.status is Status.COMPLETED and r.resumed for p in report.phases for r in p.commands)


def _execute_pickled(data: bytes, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    results.put(execute(pickle.loads(data)).model_dump(mode="json"))


def test_a_dispatched_plan_entry_pickles_and_runs_in_another_process_within_its_deadline(
    tmp_path: Path,
) -> None:
    run = _run(tmp_path)
    phase_run = run.begin_phase(run.plan.phase("first"))
    entry = run.dispatch(phase_run, phase_run.phase.command("b"))
    copy = pickle.loads(pickle.dumps(entry))
    assert copy.budget.effective_deadline == entry.budget.effective_deadline and copy.label == "first.b"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_execute_pickled, args=(pickle.dumps(entry), results))
    process.start()
    row = CommandReport.model_validate(results.get(timeout=60))
    process.join(30)
    assert row.status is Status.COMPLETED and row.name == "b"
    left = float(row.stdout_tail.split("left=")[1].split()[0])
    assert 0 < left <= 5  # the budget it was dispatched with, not a fresh one
