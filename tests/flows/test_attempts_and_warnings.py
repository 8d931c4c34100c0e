"""In the benchmark flow: a retried command's attempts each keep their own log (and the report lists them); a
cleanup's log is never overwritten by the next attempt's cleanup; a ``warn:`` reaches the command before its
deadline and the report says when."""

from __future__ import annotations

from pathlib import Path

import pytest

from grd_blocks.orchestration.status import Status
from tests.flows.helpers import run_spec

pytestmark = pytest.mark.usefixtures("prefect_api")

SPEC = """
    name: attempts
    phases:
      - name: p
        commands:
          - {name: flaky, run: "echo attempt $GRD_ATTEMPT; [ $GRD_ATTEMPT -ge 2 ]"}
        cleanup: "echo cleaning after attempt"
    """


def test_every_attempt_keeps_its_own_log_and_the_report_lists_them(tmp_path: Path) -> None:
    run_spec(tmp_path, SPEC, run_key="logs-1")
    second = run_spec(tmp_path, SPEC, run_key=None, resume_from="logs-1")
    flaky = second.command("p", "flaky")
    assert flaky.status is Status.COMPLETED and flaky.attempts == 2
    logs = [Path(path) for path in flaky.attempt_logs]
    assert [log.name for log in logs] == ["p.flaky.attempt-1.log", "p.flaky.attempt-2.log"]
    assert [log.read_text() for log in logs] == ["attempt 1\n", "attempt 2\n"]
    assert flaky.log_path == str(logs[1])
    cleanups = sorted(log.name for log in logs[0].parent.glob("p.cleanup.*.log"))
    assert cleanups == ["p.cleanup.attempt-1.log", "p.cleanup.attempt-2.log"]


def test_a_warned_command_gets_the_signal_before_its_deadline_and_the_report_says_when(
    tmp_path: Path,
) -> None:
    result = run_spec(tmp_path, """
        name: warned
        defaults: {warn: {signal: USR1, before: 1.5s}}
        phases:
          - name: p
            commands:
              - name: job
                timeout: 5s
                grace: 1s
                run: "trap 'wait; echo warned $GRD_WARN_SIGNAL $GRD_WARN_S; exit 124' USR1; sleep 30 & wait"
        """, run_key="warn-1")
    # the warning comes 3.5 s after the start: time for a shell on a loaded host to install its trap (with
    # 0.5 s, 1 run in 3 of the suite on 4 workers found no trap yet; that case is the next test's)
    job = result.command("p", "job")
    assert job.status is Status.TIMEOUT and job.returncode == 124
    assert "warned SIGUSR1 1.500" in job.stdout_tail
    assert job.timeout is not None and job.timeout.warn_sent_s is not None
    assert job.timeout.term_sent_s is None  # it stopped itself on the warning, before grd's SIGTERM


def test_a_command_the_warning_kills_before_it_can_handle_it_is_a_timeout_not_a_failure(
    tmp_path: Path,
) -> None:
    result = run_spec(tmp_path, """
        name: unready
        phases:
          - name: p
            commands:
              - {name: job, run: "exec sleep 30", timeout: 2s, grace: 1s, warn: {signal: USR1, before: 1.5s}}
        """, run_key="warn-2")
    job = result.command("p", "job")
    assert job.returncode == -10 and job.status is Status.TIMEOUT  # SIGUSR1's default action ended it
    assert job.timeout is not None and job.timeout.warn_sent_s is not None
