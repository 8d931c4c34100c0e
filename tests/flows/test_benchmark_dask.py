"""The benchmark flow with its commands on a real Dask cluster: the UI is unchanged (a task run per command
in the phase's subflow), the output reaches the task runs' logs, the rows name the worker; the scheduler
comes from the spec, the ``dask_scheduler`` parameter or ``GRD_DASK_SCHEDULER``; a bad one is a mistake."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from flows.benchmark import benchmark
from grd_blocks.orchestration.status import Status
from grd_blocks.report import BenchmarkReport
from tests.fixtures.dask_cluster import DaskCluster
from tests.prefect_edge._api import wait_for

pytestmark = pytest.mark.usefixtures("prefect_api")

SPEC = """
name: fanned
phases:
  - name: p
    max_parallel: 2
    commands:
      - {name: a, run: "echo hello-from-a"}
      - {name: b, run: "echo hello-from-b"}
"""


def test_the_dask_scheduler_parameter_runs_each_command_on_a_worker_as_a_task_run_of_the_phase(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    spec = tmp_path / "bench.yaml"
    spec.write_text(SPEC)
    report_path = tmp_path / "report.json"
    state = benchmark(spec_path=str(spec), run_key="dask-flow", store=str(tmp_path / "ckpt"),
                      report_path=str(report_path), dask_scheduler=dask_cluster.address, return_state=True)
    assert state.is_completed(), state
    report = BenchmarkReport.model_validate_json(report_path.read_text())
    rows = report.phases[0].commands
    assert [row.status for row in rows] == [Status.COMPLETED, Status.COMPLETED]
    assert all(row.worker in dask_cluster.workers() and row.host == socket.gethostname() for row in rows)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        ids = [flow_run_id, *(run.id for run in subflows)]
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    assert sorted(run.name for run in task_runs if "command_task" in run.task_key) == ["p.a", "p.b"]

    def both_outputs() -> str:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        messages = "\n".join(log.message for log in logs)
        return messages if "hello-from-a" in messages and "hello-from-b" in messages else ""

    wait_for(both_outputs, "both commands' output in the run's logs")  # logs reach the API in batches


def test_a_bad_dask_scheduler_setting_is_invalid_parameters_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "bench.yaml"
    spec.write_text(SPEC)
    monkeypatch.setenv("GRD_DASK_SCHEDULER", "scheduler:8786")
    state = benchmark(spec_path=str(spec), store=str(tmp_path / "store"), return_state=True)
    assert state.is_failed() and state.name == "InvalidParameters", state
    assert "environment variable GRD_DASK_SCHEDULER" in state.message and "tcp://" in state.message
