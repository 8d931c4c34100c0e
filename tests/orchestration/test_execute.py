"""Commands under nested budgets, real processes, no Prefect: statuses, inherited deadlines, env."""

from __future__ import annotations

import os
from pathlib import Path

from grd_blocks.orchestration.execute import execute
from grd_blocks.orchestration.run import BenchmarkRun
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CommandReport
from grd_blocks.spec import parse_spec

SPEC = """
name: unit
timeout: 60s
defaults: {grace: 1s}
phases:
  - name: short
    timeout: 1.5s
    commands:
      - name: sleeper
        run: sleep 90
        timeout: 90s
  - name: plain
    commands:
      - name: ok
        run: echo "left=$GRD_TIME_LEFT_S attempt=$GRD_ATTEMPT key=$GRD_RUN_KEY"
      - name: bad
        run: [sh, -c, "echo oops >&2; exit 3"]
      - name: missing
        run: [definitely-not-a-command-grd]
      - name: stops-itself
        run: [sh, -c, "echo saved before my budget ran out; exit 124"]
"""


def _run(tmp_path: Path, *, timeouts: bool = True) -> BenchmarkRun:
    return BenchmarkRun(spec=parse_spec(SPEC), run_key="unit-1", logs_dir=tmp_path / "logs",
                        timeouts=timeouts)


def _exec(run: BenchmarkRun, phase: str, command: str) -> CommandReport:
    phase_run = run.begin_phase(run.plan.phase(phase))
    return execute(run.dispatch(phase_run, phase_run.phase.command(command)))


def test_a_90s_command_with_1_5s_left_in_its_phase_stops_on_the_inherited_deadline(tmp_path: Path) -> None:
    row = _exec(_run(tmp_path), "short", "sleeper")
    assert row.status is Status.TIMEOUT
    timeout = row.timeout
    assert timeout is not None and timeout.level == "phase" and timeout.inherited
    assert timeout.configured_s == 90 and timeout.effective_s is not None and timeout.effective_s <= 1.5
    assert timeout.term_sent_s is not None and timeout.survivors == 0
    assert row.elapsed_s < 30  # stopped long before its own 90 s


def test_exit_zero_completes_and_the_command_sees_its_budget_and_identity(tmp_path: Path) -> None:
    row = _exec(_run(tmp_path), "plain", "ok")
    assert row.status is Status.COMPLETED and row.returncode == 0
    assert "attempt=1 key=unit-1" in row.stdout_tail
    left = float(row.stdout_tail.split("left=")[1].split()[0])
    assert 0 < left <= 60
    assert Path(str(row.log_path)).read_text().count("attempt=1") == 1


def test_nonzero_exit_is_failed_with_its_stderr_kept(tmp_path: Path) -> None:
    row = _exec(_run(tmp_path), "plain", "bad")
    assert row.status is Status.FAILED and row.returncode == 3
    assert "oops" in row.stderr_tail and row.timeout is None


def test_a_command_that_stops_itself_for_its_budget_with_exit_124_is_a_timeout(tmp_path: Path) -> None:
    row = _exec(_run(tmp_path), "plain", "stops-itself")
    assert row.status is Status.TIMEOUT and row.returncode == 124
    assert row.timeout is not None and row.timeout.term_sent_s is None and row.timeout.survivors == 0


def test_a_missing_executable_is_failed_with_a_reason_naming_it(tmp_path: Path) -> None:
    row = _exec(_run(tmp_path), "plain", "missing")
    assert row.status is Status.FAILED
    assert "definitely-not-a-command-grd" in (row.reason or "")


def test_timeouts_disabled_gives_an_unlimited_budget(tmp_path: Path) -> None:
    run = _run(tmp_path, timeouts=False)
    phase_run = run.begin_phase(run.plan.phase("short"))
    plan = run.dispatch(phase_run, phase_run.phase.command("sleeper"))
    assert plan.budget.remaining() == float("inf")
    assert run.phase_backstop(phase_run.phase) is None
    assert os.environ.get("GRD_TIME_LEFT_S") is None
