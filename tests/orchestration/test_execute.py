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
      - name: launcher-of-a-budget-stop
        run: |
          sh -c 'echo rank saved; touch "$GRD_TIMEOUT_FILE"; exit 124'
          echo child failed >&2; exit 1
      - name: launcher-of-a-crash
        run: |
          sh -c 'echo Traceback >&2; exit 3'
          echo child failed >&2; exit 1
      - name: launcher-killed-after-its-child-stopped
        run: |
          sh -c 'touch "$GRD_TIMEOUT_FILE"; exit 124'
          kill -USR1 $$
      - name: shows-its-timeout-file
        run: test ! -e "$GRD_TIMEOUT_FILE" && echo "file=$GRD_TIMEOUT_FILE" && touch "$GRD_TIMEOUT_FILE"
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


def test_a_launcher_that_turns_its_childs_budget_stop_into_exit_1_is_a_timeout_with_exit_124(
    tmp_path: Path,
) -> None:
    """What torchrun does to a rank's 124 (it exits 1), done by a shell: the timeout file says TIMEOUT."""
    row = _exec(_run(tmp_path), "plain", "launcher-of-a-budget-stop")
    assert row.status is Status.TIMEOUT and row.returncode == 124
    assert row.timeout is not None and row.timeout.launcher_returncode == 1
    assert row.timeout.term_sent_s is None and row.timeout.stopped_by is None
    assert row.note == ("it exited 1 after a process of it marked a budget stop (GRD_TIMEOUT_FILE): "
                        "reported as TIMEOUT, exit code 124")
    assert "child failed" in Path(str(row.log_path)).read_text()  # the log keeps what the launcher said


def test_a_launcher_ended_by_a_signal_after_its_child_stopped_for_its_budget_is_a_timeout_with_exit_124(
    tmp_path: Path,
) -> None:
    """torchrun has no SIGUSR1 handler: grd's warning ends it while its ranks save and stop for budget."""
    row = _exec(_run(tmp_path), "plain", "launcher-killed-after-its-child-stopped")
    assert row.status is Status.TIMEOUT and row.returncode == 124
    assert row.timeout is not None and row.timeout.launcher_returncode == -10
    assert (row.note or "").startswith("it was ended by SIGUSR1 after a process of it marked a budget stop")


def test_a_launcher_whose_child_crashed_without_the_timeout_file_stays_failed(tmp_path: Path) -> None:
    row = _exec(_run(tmp_path), "plain", "launcher-of-a-crash")
    assert row.status is Status.FAILED and row.returncode == 1
    assert row.timeout is None and row.note is None


def test_each_attempt_gets_a_timeout_file_of_its_own_that_is_gone_once_its_row_is_written(
    tmp_path: Path,
) -> None:
    run = _run(tmp_path)
    rows = [_exec(run, "plain", "shows-its-timeout-file") for _ in range(2)]
    paths = [Path(row.stdout_tail.split("file=")[1].split()[0]) for row in rows]
    assert all(row.status is Status.TIMEOUT for row in rows)  # the file did not exist when each started
    assert paths[0] != paths[1]
    assert not paths[0].exists() and not paths[1].exists()
