"""What a deployment run's log says, read back through the API as the UI shows it (the run and its phases).

Seven runs of grd-benchmark start together on the worker: one completes, one fails, one times out (its
command ignores SIGTERM, so the kill ladder goes to SIGKILL), one is cancelled after its first command
completed, one has a spec typo, one names a store that does not exist and one a memory store (a Retry,
in a new process, would find nothing). None of their logs holds a
traceback, an object repr, ``Running()`` or an ERROR line beyond the command's own outcome; each ends with
grd's one line (``benchmark NAME: STATUS, exit code N, report PATH``; the cancelled one then says what it kept
and how to resume, and publishes its results table) or, for a mistake, says what is wrong in one line at the
start. Another run's command prints a line every 2 s: each line is in the run's log within 1 s.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from grd_blocks.prefect_edge.artifacts import results_artifact_key
from tests.e2e.helpers import cancel_like_the_ui, log_records, run_logs, trigger, write_spec
from tests.fixtures.prefect_server import PrefectServer, wait_until

pytestmark = pytest.mark.e2e
DONE = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
NEVER = ("Traceback", "object at 0x", "NoneType: None", "Unexpected result", "unexpected exception",
         "Running()", "Error(", "Interrupt(", "Signal(")  # the last three: exception reprs

COMMANDS = {
    "completed": "run: echo hello",
    "failed": "run: echo out; exit 3",
    "timeout": "run: trap '' TERM; sleep 30\n                timeout: 2s",
    # a command that completes, then one that is running when the run is cancelled
    "cancelled": "run: echo warm\n"
                 "              - name: slow\n"
                 "                run: echo up > $D/started; sleep 120",
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
        "memory-store": (COMMANDS["completed"], "memory://e2e"),
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


def test_a_cancelled_run_ends_cancelled_with_its_table_and_one_line_saying_how_to_resume(
    runs: dict[str, Run], deployed: PrefectServer
) -> None:
    run = runs["cancelled"]
    assert run.state is not None and run.logs is not None
    shown = "\n".join(run.logs)
    cause = "stopped by a cancel (the UI or the API)"
    assert (run.state["type"], run.state["name"]) == ("CANCELLED", "Cancelled"), run.state
    # The worker marks the run Cancelled again (force) once its process has exited, with its own message:
    # which of the two messages the state keeps is a race in Prefect's runner (1 run of 6 kept the worker's).
    # The run's log always ends with grd's (asserted below).
    ours = f"benchmark e2e-logs: {cause}, exit code 143"
    assert run.state["message"] in (ours, "Flow run was cancelled successfully."), run.state
    errors = _check_clean(run.logs, allowed_errors=sum(line.startswith("ERROR ") for line in run.logs))
    command_end = "ERROR Finished in state Cancelled('work.slow: CANCELLED"
    assert all(e.startswith(command_end) for e in errors), shown
    assert len(errors) <= 1
    outcome, resume = [line for line in run.logs if " benchmark e2e-logs: " in line][-2:]
    assert outcome.startswith("WARNING benchmark e2e-logs: CANCELLED"), shown
    report = run.directory / "report.json"
    assert outcome == f"WARNING benchmark e2e-logs: CANCELLED, exit code 143, report {report}"
    assert resume == (f"WARNING benchmark e2e-logs: {cause}; 1 of 2 command(s) completed and are kept; "
                      f"a Retry of this flow run, or a new run with resume_from={run.flow_run_id}, runs the "
                      "other 1")
    ended = f"INFO Finished in state Cancelled('benchmark e2e-logs: {cause}, exit code 143')"
    assert run.logs[-1] == ended, shown
    with deployed.http() as client:  # the results table, as the run's Artifacts tab shows it
        response = client.post("/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [run.flow_run_id]},
                          "key": {"any_": [results_artifact_key("e2e-logs")]}}})
        response.raise_for_status()
    (table,) = response.json()
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    shown = [(row["command"], row["status"].split()[-1]) for row in rows]  # "✅ COMPLETED"
    assert shown == [("job", "COMPLETED"), ("slow", "CANCELLED")], rows


@pytest.mark.parametrize("kind, expected", [
    ("typo", "unknown key 'timeot'; did you mean 'timeout'?"),
    ("unknown-store", "no CheckpointStore block named 'no-such-store'"),
    ("memory-store", "is a memory store: it lives only in this process, so a Retry of this deployment run"),
])
def test_a_users_mistake_is_one_line_at_the_start_and_names_the_failed_state(
    runs: dict[str, Run], kind: str, expected: str
) -> None:
    run = runs[kind]
    assert run.state is not None and run.logs is not None
    assert (run.state["type"], run.state["name"]) == ("FAILED", "InvalidParameters"), "\n".join(run.logs)
    (error,) = _check_clean(run.logs, allowed_errors=1)
    begun = next(i for i, line in enumerate(run.logs) if "Beginning flow run" in line)
    assert run.logs[begun + 1] == error, run.logs  # the first thing the run says
    assert error.startswith(f"ERROR benchmark {run.directory / 'bench.yaml'}: invalid parameters: ")
    assert expected in error and expected in run.state["message"]


TICKS = 5
LIVE_SPEC = """\
    name: e2e-live
    timeout: 5m
    phases:
      - name: work
        commands:
          - name: ticks
            run: 'for i in 1 2 3 4 5; do echo "tick $i $(date +%s.%N)"; sleep 2; done; touch $D/finished'
    """


def test_a_commands_lines_reach_its_task_runs_log_while_it_runs_each_within_a_second(
    deployed: PrefectServer, tmp_path: Path
) -> None:
    """A command prints a line every 2 s, each carrying the time it was printed. The test reads the run's logs
    from the API (what the task run's page shows) ten times a second while the command runs, and notes when
    each line first appears: every line is there within 1 s of being printed, before the next one is
    printed (the deployment's PREFECT_LOGGING_TO_API_BATCH_INTERVAL is 0.25 s: prefect.yaml)."""
    spec = write_spec(tmp_path, LIVE_SPEC)
    flow_run_id = trigger(deployed, "grd-benchmark/grd-benchmark", {
        "spec_path": str(spec), "store": str(tmp_path / "store"),
        "report_path": str(tmp_path / "report.json")})
    printed: dict[int, float] = {}
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 240
    while len(seen) < TICKS and time.monotonic() < deadline:
        lines = run_logs(deployed, flow_run_id)
        now = time.time()
        for line in lines:
            found = re.search(r"work\.ticks \| tick (\d) (\d+\.\d+)$", line)
            if found and int(found[1]) not in seen:
                seen[int(found[1])], printed[int(found[1])] = now, float(found[2])
        time.sleep(0.1)
    finished = tmp_path / "finished"
    assert sorted(seen) == list(range(1, TICKS + 1)), (seen, run_logs(deployed, flow_run_id))
    lag = {tick: round(seen[tick] - printed[tick], 2) for tick in seen}
    assert not finished.exists() or finished.stat().st_mtime > seen[TICKS], f"seen only at the end: {lag}"
    assert all(seen[tick] < printed[tick + 1] for tick in range(1, TICKS)), lag
    assert max(lag.values()) <= 1.0, f"seconds from print to the run's log: {lag}"
    assert deployed.wait_for_state(flow_run_id, DONE)["state"]["type"] == "COMPLETED"
