"""Long-run approval on deployed runs: answered by `grd approve` and by the UI form; retries are not asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from grd_blocks.prefect_edge.ledger import open_ledger
from tests.e2e.browser import screenshot, ui_page
from tests.e2e.helpers import flow_run_logs, read_json, retry_like_the_ui, trigger
from tests.fixtures.prefect_server import PrefectServer, wait_until

pytestmark = pytest.mark.e2e
PROBE = "grd-approval-probe/grd-approval-probe"
DONE = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def start_probe(server: PrefectServer, tmp_path: Path, run_key: str) -> tuple[str, dict[str, Any]]:
    params = {"run_key": run_key, "store": str(tmp_path / "store"), "estimate_s": 3600,
              "default_budget_s": 600, "result_path": str(tmp_path / "result.json")}
    flow_run_id = trigger(server, PROBE, params)
    server.wait_for_state(flow_run_id, {"PAUSED"} | DONE)
    assert server.flow_run(flow_run_id)["state"]["type"] == "PAUSED"

    def why_paused() -> list[str]:  # logs reach the API in batches
        return [m for m in flow_run_logs(server, flow_run_id) if "paused until someone approves" in m]

    (line,) = wait_until(why_paused, "the paused run's line saying why and how to answer", 60)
    assert f"run {run_key} is estimated at 60.0 min, over its default budget of 10.0 min" in line, line
    assert "Resume on this run's page" in line and f"grd approve {flow_run_id} --minutes 60" in line, line
    return flow_run_id, params


def test_grd_approve_resumes_the_paused_run_with_the_limit_and_a_retry_is_not_asked(
    deployed: PrefectServer, tmp_path: Path
) -> None:
    flow_run_id, params = start_probe(deployed, tmp_path, "e2e-cli")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "grd"), "approve", flow_run_id, "--minutes", "90",
         "--reason", "quarterly eval", "--approver", "ana"],
        env=deployed.env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    run = deployed.wait_for_state(flow_run_id, DONE)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert read_json(Path(params["result_path"])) == {
        "limit_s": 5400.0, "who": "ana", "reason": "quarterly eval", "asked": True, "reused": False}

    retry_like_the_ui(deployed, flow_run_id)  # same flow run id, same run key: the decision holds
    deployed.wait_for_state(flow_run_id, {"RUNNING", "PAUSED"} | DONE, timeout_s=60)
    run = deployed.wait_for_state(flow_run_id, DONE | {"PAUSED"})
    assert run["state"]["type"] == "COMPLETED", run["state"]
    result = read_json(Path(params["result_path"]))
    assert result["reused"] and not result["asked"] and result["limit_s"] == 5400.0
    kinds = [r.kind for r in open_ledger(params["store"], "e2e-cli").records()]
    assert kinds == ["requested", "approved", "reused"]


def _left_paused(server: PrefectServer, flow_run_id: str, timeout_s: float) -> bool:
    try:
        server.wait_for_state(flow_run_id, {"RUNNING", "PENDING", "SCHEDULED"} | DONE, timeout_s=timeout_s)
    except AssertionError:
        return False
    return True


def test_approval_given_in_the_ui_form_resumes_the_run(deployed: PrefectServer, tmp_path: Path) -> None:
    flow_run_id, params = start_probe(deployed, tmp_path, "e2e-ui")
    page_url = f"{deployed.ui_url}/runs/flow-run/{flow_run_id}"
    with ui_page(page_url) as page:
        p: Any = page
        # A person submits the form; if the run is still paused a minute later, they reload the page and
        # submit again (at most twice more). Why: on a loaded host the SQLite server can answer the resume
        # with "database is locked" (Prefect's own store, not grd; 2 clean runs of 6 lost the first submit);
        # what is proved is unchanged: the form's values reach the run and resume it.
        for attempt in range(3):
            if attempt:
                screenshot(p, f"approval-still-paused-{attempt}")
                p.goto(page_url)
            p.get_by_role("button", name="Resume").first.click()
            form = p.get_by_role("dialog")
            form.get_by_text("grd long-run approval").wait_for()
            form.locator("input[type=number]").fill("45")
            form.locator("textarea").nth(0).fill("approved from the browser")
            form.locator("textarea").nth(1).fill("bo in the UI")
            screenshot(p, "approval-form")
            form.get_by_role("button", name="Submit").click()
            if _left_paused(deployed, flow_run_id, 60):
                break
        run = deployed.wait_for_state(flow_run_id, DONE)
        p.reload()
        p.get_by_text("Completed").first.wait_for()
        screenshot(p, "approval-completed")
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert read_json(Path(params["result_path"])) == {
        "limit_s": 2700.0, "who": "bo in the UI", "reason": "approved from the browser", "asked": True,
        "reused": False}
