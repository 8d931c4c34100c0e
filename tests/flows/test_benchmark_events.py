"""The benchmark flow tells automations what happened: one event per phase, one per failed or timed-out
command, none of its own for a command that completed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.helpers import run_spec
from tests.prefect_edge.test_events import read_events

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_a_phase_emits_its_summary_and_one_event_per_failed_or_timed_out_command(tmp_path: Path) -> None:
    run_spec(tmp_path, """
        name: events-demo
        phases:
          - name: smoke
            timeout: 1s
            commands:
              - name: quick
                run: "true"
              - name: broken
                run: "exit 3"
              - name: slow
                run: sleep 60
                grace: 0s
        """, run_key="ev-bench-1")
    events = read_events("ev-bench-1", 3)
    names = sorted((e.event, e.payload.get("command")) for e in events)
    assert names == [
        ("grd.command.failed", "broken"),
        ("grd.command.timed_out", "slow"),
        ("grd.phase.completed", None),
    ]
    by_name = {e.event: e for e in events}
    timed_out = by_name["grd.command.timed_out"]
    assert timed_out.payload["level"] == "phase" and timed_out.payload["inherited"] is True
    failed = by_name["grd.command.failed"]
    assert failed.payload["returncode"] == 3 and failed.resource["grd.command"] == "broken"
    phase = by_name["grd.phase.completed"]
    assert phase.payload["phase"] == "smoke" and phase.payload["status"] == "FAILED"
    assert phase.payload["counts"] == {"COMPLETED": 1, "FAILED": 1, "TIMEOUT": 1}
    assert phase.payload["not_completed"] == ["broken: FAILED", "slow: TIMEOUT"]
    assert phase.resource["grd.phase"] == "smoke" and phase.resource["grd.status"] == "FAILED"


def test_an_attempt_that_skips_completed_commands_emits_run_resumed(tmp_path: Path) -> None:
    spec = """
        name: resume-events
        phases:
          - name: smoke
            commands:
              - {name: ok, run: "true"}
              - {name: bad, run: "exit 3"}
        """
    run_spec(tmp_path, spec, run_key="ev-resume-1")
    run_spec(tmp_path, spec, run_key="ev-resume-1")
    # bad + the phase, then bad again + the phase + the resume (ok is skipped)
    events = read_events("ev-resume-1", 5)
    resumed = [e for e in events if e.event == "grd.run.resumed"]
    assert len(resumed) == 1 and resumed[0].payload["skipped"] == ["smoke.ok"]
