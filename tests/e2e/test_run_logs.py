"""What a deployment run's log says, read back through the API as the UI shows it (the run and its phases).

Six runs of grd-benchmark start together on the worker: one completes, one fails, one times out (its
command ignores SIGTERM, so the kill ladder goes to SIGKILL), one is cancelled, one has a spec typo and one
names a store that does not exist. None of their logs holds a traceback, an object repr or an ERROR line
beyond the command's own outcome; each ends with grd's one line (``benchmark NAME: STATUS, exit code N,
report PATH``) or, for a mistake, says what is wrong in one line at the start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import cancel_like_the_ui, log_records, run_logs, trigger, write_spec
from tests.fixtures.prefect_server import PrefectServer, wait_until

pytestmark = pytest.mark.e2e
DONE = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
NEVER = ("Traceback", "object at 0x", "NoneType: None", "Unexpected result", "unexpected exception")

COMMANDS = {
    "completed": "run: echo hello",
    "failed": "run: echo out; exit 3",
    "timeout": "run: trap '' TERM; sleep 30\n                timeout: 2s",
    "cancelled": "run: echo up > $D/started; sleep 120",
}


@dataclass
class Run:
    flow_run_id: str
    directory: Path
    state: dict[str, Any] | None = None
    logs: list[str] | None = None


def _spec(directory: Path, body: str) -> Path:
    return write_spec(directory, f"""\
        name: e2e-logs
        timeout: 5m
        grace: 1s
        phases:
          - name: work
            commands:
              - name: job
                {body}
        """)


@pytest.fixture(scope="module")
def runs(deployed: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    started: dict[str, Run] = {}
    cases: dict[str, tuple[str, str | None]] = {
        **{kind: (COMMANDS[kind], None) for kind in COMMANDS},
        "typo": ("run: echo never\n                timeot: 2s", None),
        "unknown-store": (COMMANDS["completed"], "no-such-store"),
    }
    for kind, (body, store) in cases.items():
        directory = tmp_path_factory.mktemp(f"logs-{kind}")
        params = {"spec_path": str(_spec(directory, body)), "store": store or str(directory / "store"),
                  "report_path": str(directory / "report.json")}
        started[kind] = Run(trigger(deployed, "grd-benchmark/grd-benchmark", params), directory)
    cancelled = started["cancelled"]
    wait_until(lambda: (cancelled.directory / "started").exists(), "the command to cancel to start", 180)
    cancel_like_the_ui(deployed, cancelled.flow_run_id)
    for kind, run in started.items():
        run.state = deployed.wait_for_state(run.flow_run_id, DONE)["state"]

        def ended(run: Run = run) -> list[str]:  # logs reach the API in batches, after the state
            # The run's own last lines, not its phase subflow's (which also end "Finished in state").
            own = [record["message"] for record in log_records(deployed, [run.flow_run_id])]
            if not any("Finished in state" in message for message in own[-3:]):
                return []
            return run_logs(deployed, run.flow_run_id)

        run.logs = wait_until(ended, f"the {kind} run's last log lines", 60)
    return started


def _check_clean(logs: list[str], allowed_errors: int = 0) -> list[str]:
    text = "\n".join(logs)
    for word in NEVER:
        assert word not in text, f"{word!r} in the run's logs:\n{text}"
    errors = [line for line in logs if line.startswith("ERROR ")]
    assert len(errors) == allowed_errors, "\n".join(errors)
    return errors


def _last_grd_line(logs: list[str]) -> str:
    return next(line for line in reversed(logs) if " benchmark e2e-logs: " in line)


def test_a_completed_run_has_no_error_or_warning_and_ends_with_its_line(runs: dict[str, Run]) -> None:
    run = runs["completed"]
    assert run.state is not None and run.logs is not None and run.state["type"] == "COMPLETED"
    _check_clean(run.logs)
    assert not [line for line in run.logs if line.startswith("WARNING ")], run.logs
    assert _last_grd_line(run.logs) == (
        f"INFO benchmark e2e-logs: COMPLETED, exit code 0, report {run.directory / 'report.json'}")


def test_a_failed_run_shows_the_commands_failure_once_and_ends_with_one_line(runs: dict[str, Run]) -> None:
    run = runs["failed"]
    assert run.state is not None and run.logs is not None and run.state["type"] == "FAILED"
    (error,) = _check_clean(run.logs, allowed_errors=1)
    assert error.startswith("ERROR Finished in state Failed('work.job: FAILED (returncode 3, "), error
    assert _last_grd_line(run.logs) == (
        f"WARNING benchmark e2e-logs: FAILED, exit code 1, report {run.directory / 'report.json'}")


def test_a_timed_out_run_logs_each_kill_ladder_step_and_ends_with_one_line(runs: dict[str, Run]) -> None:
    run = runs["timeout"]
    assert run.state is not None and run.logs is not None
    assert (run.state["type"], run.state["name"]) == ("FAILED", "TimedOut")
    (error,) = _check_clean(run.logs, allowed_errors=1)
    assert error.startswith("ERROR Finished in state TimedOut('work.job: TIMEOUT (returncode -9, "), error
    assert re.search(r"command deadline: SIGTERM at [0-9.]+s, SIGKILL at [0-9.]+s, 0 survivor\(s\)", error)
    ladder = [line for line in run.logs if line.startswith(("INFO work.job: ", "WARNING work.job: "))]
    assert "sent SIGTERM" in ladder[0] and ladder[0].startswith("INFO "), ladder
    assert re.search(r"ignored SIGTERM for [0-9.]+s; sending SIGKILL", ladder[1]), ladder
    assert ladder[1].startswith("WARNING "), ladder
    assert _last_grd_line(run.logs) == (
        f"WARNING benchmark e2e-logs: TIMEOUT, exit code 124, report {run.directory / 'report.json'}")


def test_a_cancelled_run_ends_with_one_line_and_no_traceback(runs: dict[str, Run]) -> None:
    run = runs["cancelled"]
    assert run.state is not None and run.logs is not None and run.state["type"] == "CANCELLED"
    errors = _check_clean(run.logs, allowed_errors=sum(line.startswith("ERROR ") for line in run.logs))
    assert all(e.startswith("ERROR Finished in state Cancelled('work.job: CANCELLED") for e in errors), errors
    assert len(errors) <= 1
    assert _last_grd_line(run.logs) == (
        f"WARNING benchmark e2e-logs: CANCELLED, exit code 143, report {run.directory / 'report.json'}")


@pytest.mark.parametrize("kind, expected", [
    ("typo", "unknown key 'timeot'; did you mean 'timeout'?"),
    ("unknown-store", "no CheckpointStore block named 'no-such-store'"),
])
def test_a_users_mistake_is_one_line_at_the_start_and_names_the_failed_state(
    runs: dict[str, Run], kind: str, expected: str
) -> None:
    run = runs[kind]
    assert run.state is not None and run.logs is not None
    assert (run.state["type"], run.state["name"]) == ("FAILED", "InvalidParameters")
    (error,) = _check_clean(run.logs, allowed_errors=1)
    begun = next(i for i, line in enumerate(run.logs) if "Beginning flow run" in line)
    assert run.logs[begun + 1] == error, run.logs  # the first thing the run says
    assert error.startswith(f"ERROR benchmark {run.directory / 'bench.yaml'}: invalid parameters: ")
    assert expected in error and expected in run.state["message"]
