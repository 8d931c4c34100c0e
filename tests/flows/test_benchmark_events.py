"""The benchmark flow tells automations what happened: one event per ended command, one more per timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.helpers import run_spec
from tests.prefect_edge.test_events import read_events

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_a_timed_out_command_emits_timed_out_and_completed_events_about_its_run(tmp_path: Path) -> None:
    run_spec(tmp_path, """
        name: events-demo
        phases:
          - name: smoke
            timeout: 1s
            commands:
              - name: quick
                run: "true"
              - name: slow
                run: sleep 60
                grace: 0s
        """, run_key="ev-bench-1")
    events = read_events("ev-bench-1", 3)
    names = sorted((e.event, e.payload.get("command")) for e in events)
    assert names == [
        ("grd.command.completed", "quick"),
        ("grd.command.completed", "slow"),
        ("grd.command.timed_out", "slow"),
    ]
    timed_out = next(e for e in events if e.event == "grd.command.timed_out")
    assert timed_out.payload["level"] == "phase" and timed_out.payload["inherited"] is True


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
    events = read_events("ev-resume-1", 4)  # ok + bad, then bad again + the resume (ok is skipped)
    resumed = [e for e in events if e.event == "grd.run.resumed"]
    assert len(resumed) == 1 and resumed[0].payload["skipped"] == ["smoke.ok"]
