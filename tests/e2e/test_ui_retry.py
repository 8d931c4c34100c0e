"""The "Retry" button of the Prefect UI, clicked in headless chromium on a timed-out run, resumes that run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser import screenshot, ui_page
from tests.e2e.helpers import read_json, trigger, write_spec
from tests.fixtures.prefect_server import PrefectServer

pytestmark = pytest.mark.e2e
DONE = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

# `first` completes once; `slow` times out on the first attempt and finishes quickly on the next.
SPEC = """\
    name: e2e-retry
    timeout: 2m
    grace: 1s
    phases:
      - name: work
        commands:
          - name: first
            run: echo ran >> $D/first.count
          - name: slow
            run: if [ -f $D/slow.marker ]; then echo resumed; else touch $D/slow.marker; sleep 60; fi
            timeout: 3s
    """


def test_retry_clicked_in_the_ui_on_a_timed_out_run_resumes_it(
    deployed_on: PrefectServer, tmp_path: Path
) -> None:
    deployed = deployed_on
    spec = write_spec(tmp_path, SPEC)
    report_path = tmp_path / "report.json"
    flow_run_id = trigger(deployed, "grd-benchmark/grd-benchmark", {
        "spec_path": str(spec), "store": str(tmp_path / "store"), "report_path": str(report_path)})
    run = deployed.wait_for_state(flow_run_id, DONE)
    assert run["state"]["type"] == "FAILED" and run["state"]["name"] == "TimedOut", run["state"]
    assert read_json(report_path)["status"] == "TIMEOUT"

    with ui_page(f"{deployed.ui_url}/runs/flow-run/{flow_run_id}") as page:
        p: Any = page
        p.get_by_role("button", name="Retry").first.click()
        confirm = p.get_by_role("dialog")
        screenshot(p, f"retry-confirm-{deployed.backend}")
        confirm.get_by_role("button", name="Retry").click()
        deployed.wait_for_state(flow_run_id, {"SCHEDULED", "PENDING", "RUNNING", "COMPLETED"}, timeout_s=60)
        run = deployed.wait_for_state(flow_run_id, DONE)
        p.reload()
        p.get_by_text("Completed").first.wait_for()
        screenshot(p, f"retry-resumed-{deployed.backend}")

    assert run["state"]["type"] == "COMPLETED", run["state"]
    report = read_json(report_path)
    assert report["status"] == "COMPLETED" and report["run_key"] == flow_run_id
    commands = {c["name"]: c for c in report["phases"][0]["commands"]}
    assert commands["slow"]["status"] == "COMPLETED" and "resumed" in commands["slow"]["stdout_tail"]
    assert (tmp_path / "first.count").read_text() == "ran\n"  # the completed command was not run again
