"""Resume: a run with the same run key (``resume_from`` or a flow retry) skips completed commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from grd_blocks.orchestration.status import Status
from tests.flows.helpers import run_spec

pytestmark = pytest.mark.usefixtures("prefect_api")

SPEC = """
    name: resumable
    phases:
      - name: p
        commands:
          - {name: once, run: "echo ran >> $D/once.count"}
          - {name: flaky, run: "echo attempt $GRD_ATTEMPT >> $D/flaky.count; [ $GRD_ATTEMPT -ge 2 ]"}
    """


def test_resume_from_skips_completed_commands_and_reruns_failed_ones(tmp_path: Path) -> None:
    first = run_spec(tmp_path, SPEC, run_key="nightly-1")
    assert first.report.status is Status.FAILED
    second = run_spec(tmp_path, SPEC, run_key=None, resume_from="nightly-1")
    once, flaky = second.command("p", "once"), second.command("p", "flaky")
    assert once.status is Status.COMPLETED and once.resumed and once.attempts == 1
    assert flaky.status is Status.COMPLETED and not flaky.resumed and flaky.attempts == 2
    assert (tmp_path / "once.count").read_text().count("ran") == 1
    assert second.report.run_key == "nightly-1" and second.report.status is Status.COMPLETED


def test_a_flow_retry_keeps_the_flow_run_id_and_resumes(tmp_path: Path) -> None:
    result = run_spec(tmp_path, SPEC, run_key=None, retries=1)
    assert result.report.status is Status.COMPLETED and result.state.is_completed()
    assert result.report.run_key == result.report.flow_run_id
    assert result.command("p", "once").resumed
    assert (tmp_path / "once.count").read_text().count("ran") == 1
    assert (tmp_path / "flaky.count").read_text().split() == ["attempt", "1", "attempt", "2"]
