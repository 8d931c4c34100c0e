"""In the benchmark flow, on a real ephemeral API, with a real Python command that checkpoints through
``GRD_CHECKPOINT_URL``: an attempt whose budget ends before its first save says so in one WARNING line of the
run's log and in its row's note, naming the earlier attempt's time to first save and the fix, and counts the
attempts that made no progress; an attempt that saved gets no such line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from grd_blocks.orchestration.status import Status
from tests.flows.helpers import run_spec
from tests.logcapture import Records

pytestmark = pytest.mark.usefixtures("prefect_api")

SCRIPT = """\
import os, sys, time
from grd_blocks.checkpoint import RunCheckpoints
run = RunCheckpoints.from_env()
attempt = int(os.environ["GRD_ATTEMPT"])
if attempt >= 2:
    time.sleep(600)  # a start-up longer than its budget (imports under load)
run.save({"attempt": attempt}, step=attempt)
print("saved", flush=True)
sys.exit(124)  # stopped itself for its budget, after saving
"""


def _spec(script: Path, timeout: str) -> str:
    return f"""
        name: stalls
        phases:
          - name: train
            commands:
              - {{name: fit, run: ["{sys.executable}", "{script}"], timeout: {timeout}, grace: 0s}}
        """


@pytest.fixture
def flow_log() -> Iterator[Records]:
    records = Records()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(records)
    try:
        yield records
    finally:
        logger.removeHandler(records)


def _stall_lines(records: Records) -> list[str]:
    return [message for level, message in records.lines
            if level == "WARNING" and "with no new checkpoint in" in message]


def test_attempts_stopped_before_their_first_save_say_so_and_count_on(
    tmp_path: Path, flow_log: Records
) -> None:
    script = tmp_path / "slow_start.py"
    script.write_text(SCRIPT)
    first = run_spec(tmp_path, _spec(script, "120s"), run_key="stall-1").command("train", "fit")
    assert first.status is Status.TIMEOUT and first.returncode == 124, first.stdout_tail + first.stderr_tail
    assert first.checkpoints is not None and first.checkpoints.committed
    assert first.checkpoints.latest == "step_1"
    assert first.note is None and _stall_lines(flow_log) == []  # it saved: nothing to say
    saved_after = first.checkpoints.first_commit_s
    assert saved_after is not None

    for attempt, loop in ((2, "this attempt made no progress"), (3, "no progress in 2 attempts")):
        again = run_spec(tmp_path, _spec(script, "1s"), run_key=None, resume_from="stall-1")
        row = again.command("train", "fit")
        assert row.status is Status.TIMEOUT and row.attempts == attempt
        lines = _stall_lines(flow_log)
        assert len(lines) == attempt - 1 and row.note == lines[-1]
        assert lines[-1].startswith("train.fit: stopped by its budget (command deadline, granted ")
        assert f"attempt 1's first checkpoint came {saved_after:.1f}s after its start; {loop}: raise its " \
               "timeout above the time to its first checkpoint, or save earlier" in lines[-1]
        assert row.checkpoints is not None and row.checkpoints.stalled_attempts == attempt - 1
        assert row.checkpoints.latest == "step_1"


def test_a_plain_command_stopped_by_its_budget_is_just_a_timeout_in_every_attempt(
    tmp_path: Path, flow_log: Records
) -> None:
    """A command that never opens its checkpoints (a shell `sleep`, a compiler) gets no "no new checkpoint"
    line, note or count, in its first attempt or a resumed one (what `make demo`'s timed-out row showed)."""
    spec = """
        name: plain
        phases:
          - name: build
            commands:
              - {name: compile, run: "sleep 30", timeout: 1s, grace: 0s}
        """
    first = run_spec(tmp_path, spec, run_key="plain-1").command("build", "compile")
    again = run_spec(tmp_path, spec, run_key=None, resume_from="plain-1").command("build", "compile")
    for attempt, row in ((1, first), (2, again)):
        assert row.status is Status.TIMEOUT and row.attempts == attempt
        assert row.note is None or "checkpoint" not in row.note, row.note
        assert row.checkpoints is not None and row.checkpoints.stalled_attempts == 0
    assert _stall_lines(flow_log) == []
