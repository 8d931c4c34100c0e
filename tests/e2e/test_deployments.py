"""`prefect deploy --all` against a real server, a process pool and a worker: triggered runs complete, and
schedules, served by the server's own scheduler, create runs that a worker completes. The deploy and
schedule tests run on both backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from tests.e2e.helpers import clone_deployment, deployment_runs, read_json, run_logs, trigger, write_spec
from tests.fixtures.prefect_server import PrefectServer, wait_until

pytestmark = pytest.mark.e2e


def test_deploy_all_then_a_triggered_benchmark_run_completes_on_the_worker(deployed_on: PrefectServer,
                                                                         tmp_path: Path) -> None:
    deployed = deployed_on
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


def _pause(server: PrefectServer, deployment_id: str) -> None:
    with server.http() as client:
        client.patch(f"/deployments/{deployment_id}", json={"paused": True}).raise_for_status()


def test_a_schedule_seconds_apart_creates_runs_that_the_worker_completes(deployed_on: PrefectServer,
                                                                         tmp_path: Path) -> None:
    """The server's scheduler (not the test) creates the runs; the worker picks them up; they complete."""
    server = deployed_on
    spec = write_spec(tmp_path, """\
        name: e2e-scheduled
        timeout: 1m
        phases:
          - name: tick
            commands:
              - name: stamp
                run: echo "$GRD_RUN_KEY" >> $D/ran.txt
        """)
    params = {"spec_path": str(spec), "store": str(tmp_path / "store"),
              "report_path": str(tmp_path / "r.json")}
    deployment_id = clone_deployment(server, "grd-benchmark/grd-benchmark",
                                     name=f"every-8s-{uuid.uuid4().hex[:6]}", pool=server.pool,
                                     parameters=params,
                                     schedules=[{"schedule": {"interval": 8}, "active": True}])
    try:
        def completed() -> list[dict[str, object]]:
            done = [r for r in deployment_runs(server, deployment_id) if r["state_type"] == "COMPLETED"]
            return done if len(done) >= 2 else []

        done = wait_until(completed, "two scheduled runs of the deployment to complete", 300, interval_s=1)
    finally:
        _pause(server, deployment_id)  # no more runs; the session's other tests keep the worker to themselves
    assert all(run["auto_scheduled"] for run in done), [(r["name"], r["auto_scheduled"]) for r in done]
    starts = sorted(dt.datetime.fromisoformat(str(run["expected_start_time"])) for run in done)
    assert (starts[1] - starts[0]).total_seconds() % 8 == 0, starts  # on the schedule's grid
    ran = set((tmp_path / "ran.txt").read_text().split())
    assert {str(run["id"]) for run in done} <= ran  # each run really ran its command on the worker
    for run in done:  # logs reach the API in batches, after the state
        wait_until(lambda run=run: "INFO benchmark e2e-scheduled: COMPLETED, exit code 0" in "\n".join(
            run_logs(server, str(run["id"]))), f"run {run['id']}'s last line in its logs", 60)


def test_the_nightly_deployment_shows_its_next_0200_utc_run_as_scheduled(deployed_on: PrefectServer) -> None:
    server = deployed_on
    with server.http() as client:
        found = client.get("/deployments/name/grd-benchmark/grd-nightly")
        found.raise_for_status()
    nightly = found.json()

    def scheduled() -> list[dict[str, object]]:
        return [r for r in deployment_runs(server, nightly["id"]) if r["state_type"] == "SCHEDULED"]

    try:
        upcoming = wait_until(scheduled, "grd-nightly's next run to be Scheduled", 120, interval_s=1)
    finally:
        _pause(server, nightly["id"])  # a session that spans 02:00 UTC must not run the nightly benchmark
    now = dt.datetime.now(dt.UTC)
    next_0200 = now.replace(hour=2, minute=0, second=0, microsecond=0)
    if next_0200 <= now:
        next_0200 += dt.timedelta(days=1)
    first = upcoming[0]
    assert first["state_name"] == "Scheduled" and first["auto_scheduled"], first
    assert dt.datetime.fromisoformat(str(first["expected_start_time"])) == next_0200, first
