"""`prefect deploy --all` against a real server, a process pool and a worker: triggered runs complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.helpers import read_json, trigger, write_spec
from tests.fixtures.prefect_server import PrefectServer

pytestmark = pytest.mark.e2e


def test_deploy_all_then_a_triggered_benchmark_run_completes_on_the_worker(deployed: PrefectServer,
                                                                         tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """\
        name: e2e-smoke
        timeout: 2m
        phases:
          - name: smoke
            commands:
              - name: hello
                run: echo hello from the worker
        """)
    report_path = tmp_path / "report.json"
    flow_run_id = trigger(deployed, "grd-benchmark/grd-benchmark", {
        "spec_path": str(spec), "store": str(tmp_path / "store"), "report_path": str(report_path)})
    run = deployed.wait_for_state(flow_run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
    assert run["state"]["type"] == "COMPLETED", run["state"]
    report = read_json(report_path)
    assert report["status"] == "COMPLETED" and report["flow_run_id"] == flow_run_id
    assert "hello from the worker" in report["phases"][0]["commands"][0]["stdout_tail"]


def test_prefect_yaml_declares_benchmark_training_and_a_nightly_cron(deployed: PrefectServer) -> None:
    with deployed.http() as client:
        response = client.post("/deployments/filter", json={})
        response.raise_for_status()
        deployments = {d["name"]: d for d in response.json()}
    assert {"grd-benchmark", "grd-train", "grd-nightly"} <= set(deployments)
    crons = [s["schedule"].get("cron") for s in deployments["grd-nightly"]["schedules"]]
    assert crons == ["0 2 * * *"]
    assert deployments["grd-train"]["work_pool_name"] == "grd-process"


def test_the_documented_crash_detection_automation_is_accepted_by_the_server(deployed: PrefectServer) -> None:
    deployed.prefect("automation", "create", "--from-file", "docs/zombie-flow-runs.automation.yaml")
    with deployed.http() as client:
        response = client.post("/automations/filter", json={})
        response.raise_for_status()
    automation = next(a for a in response.json() if a["name"] == "grd-crash-zombie-flow-runs")
    try:
        assert automation["trigger"]["posture"] == "Proactive"
        assert automation["actions"][0]["state"] == "CRASHED"
    finally:  # its 90 s window would mark later long runs on this shared server Crashed
        with deployed.http() as client:
            client.delete(f"/automations/{automation['id']}").raise_for_status()
