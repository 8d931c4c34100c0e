"""A grd run that does not complete ends in one clear line: its state resolves to a ``RunEnded`` (never a
TypeError over the report), and only Prefect's records that repeat that outcome are dropped."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prefect.exceptions import FailedRun
from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings
from prefect.states import get_state_exception

from grd_blocks.errors import ApprovalRejected, ConfigError, TrainingInterrupted
from grd_blocks.orchestration.status import Status
from grd_blocks.prefect_edge.run_end import RunEnded, quiet_run_ends, rejected, report_of
from grd_blocks.prefect_edge.states import final_state

REPORT = {"benchmark": "demo", "status": "TIMEOUT", "phases": []}


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Any:
    handler = Capture()
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    quiet_run_ends()
    with temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):  # no flow run here
        yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.mark.parametrize("status", [Status.FAILED, Status.TIMEOUT, Status.CANCELLED])
def test_a_run_that_did_not_complete_raises_its_outcome_line_not_a_type_error(status: Status) -> None:
    state = final_state(status, REPORT, f"benchmark demo: {status.value}, exit code 124")
    exc = get_state_exception(state)
    assert isinstance(exc, RunEnded) and str(exc) == f"benchmark demo: {status.value}, exit code 124"
    assert report_of(state.result(raise_on_failure=False)) == REPORT
    with pytest.raises(RunEnded):
        state.result()


def test_completed_and_skipped_states_carry_the_report_itself() -> None:
    assert final_state(Status.COMPLETED, REPORT, "ok").result() == REPORT
    assert final_state(Status.SKIPPED, REPORT, "skipped").result() == REPORT


def test_only_the_records_repeating_a_grd_outcome_are_dropped(captured: Capture) -> None:
    flows, tasks = logging.getLogger("prefect.flow_runs"), logging.getLogger("prefect.task_runs")
    stop = TrainingInterrupted("preempted", global_step=3, checkpoint_url=None)
    # FailedRun: what Prefect raises for a grd state whose data it did not keep (1 e2e run of 6 logged its
    # traceback after "Finished in state InvalidParameters(...)")
    lost = FailedRun("benchmark x: invalid parameters")
    expected = (RunEnded("benchmark demo: FAILED, exit code 1"), stop, lost)
    for exc in (*expected, ValueError("a real bug")):
        try:
            raise exc
        except Exception:
            flows.exception("Encountered exception during execution: %r", exc)
            flows.error("Engine execution exited with unexpected exception", exc_info=True)
    repr_line = "Task run failed with state: Failed(message='p.bad: FAILED', result=<CommandResult ...>)"
    tasks.error(repr_line, exc_info=True, extra={"task_name": "grd-command"})
    tasks.error(repr_line, exc_info=True, extra={"task_name": "someone-elses-task"})
    tasks.error("Finished in state Failed('p.bad: FAILED (returncode 3, 0.0s)')",
                extra={"task_name": "grd-command"})
    kept = [(r.getMessage(), r.exc_info[1] if r.exc_info else None) for r in captured.records]
    assert [(m, type(e).__name__) for m, e in kept] == [
        ("Encountered exception during execution: ValueError('a real bug')", "ValueError"),
        ("Engine execution exited with unexpected exception", "ValueError"),
        (repr_line, "NoneType"),
        ("Finished in state Failed('p.bad: FAILED (returncode 3, 0.0s)')", "NoneType"),
    ]


@pytest.mark.parametrize("exc, name, label", [
    (ConfigError("no CheckpointStore block named 'nope'"), "InvalidParameters", "invalid parameters"),
    (ApprovalRejected("r1", who="ana", reason="too long"), "NotApproved", "not approved"),
])
def test_a_mistake_or_refusal_is_one_error_line_and_a_named_failed_state(
    exc: Exception, name: str, label: str, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("grd.test.rejected")
    with caplog.at_level(logging.INFO, logger="grd.test.rejected"):
        state = rejected(exc, logger, "benchmark spec.yaml")
    line = f"benchmark spec.yaml: {label}: {exc}"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("ERROR", line)]
    assert state.is_failed() and state.name == name and state.message == line
    assert report_of(get_state_exception(state)) is exc
