"""Driving deployments on the e2e server: trigger a run by deployment name, read files the run wrote."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from tests.fixtures.prefect_server import PrefectServer, pids_with_env


def trigger(server: PrefectServer, deployment: str, parameters: dict[str, Any]) -> str:
    """Create a flow run of ``flow-name/deployment-name`` with ``parameters``; returns its id."""
    with server.http() as client:
        found = client.get(f"/deployments/name/{deployment}")
        found.raise_for_status()
        created = client.post(f"/deployments/{found.json()['id']}/create_flow_run",
                              json={"parameters": parameters})
        created.raise_for_status()
        flow_run_id: str = created.json()["id"]
        return flow_run_id


def retry_like_the_ui(server: PrefectServer, flow_run_id: str) -> None:
    """What the UI's "Retry" does: put the finished run back to AwaitingRetry (scheduled now), same id."""
    with server.http() as client:
        response = client.post(f"/flow_runs/{flow_run_id}/set_state",
                               json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True})
        response.raise_for_status()


def write_spec(directory: Path, text: str) -> Path:
    path = directory / "bench.yaml"
    path.write_text(textwrap.dedent(text).replace("$D", str(directory)))
    return path


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# --- fault injection (helper "e2e-faults"): cancel like the UI, process identity, machine loss -----------


def cancel_like_the_ui(server: PrefectServer, flow_run_id: str) -> None:
    """What the UI's "Cancel" does: propose Cancelling; the worker then stops the flow run's process."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
        result: Any = client.set_flow_run_state(flow_run_id, Cancelling())
    assert result.status.value == "ACCEPT", f"Cancelling was not accepted for {flow_run_id}: {result}"


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def still_running(pid: int, started: int) -> bool:
    """Whether the process ``pid`` that started at ``started`` is alive (a reused pid or a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) == started and fields[0] not in ("Z", "X")


def flow_run_pids(flow_run_id: str) -> list[int]:
    """Live processes whose environment says they run ``flow_run_id`` (the engine and its children)."""
    return pids_with_env(f"PREFECT__FLOW_RUN_ID={flow_run_id}")


def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def task_run_states(server: PrefectServer, flow_run_id: str) -> dict[str, str]:
    """``{task run name: state type}`` of every task run in ``flow_run_id`` and its subflow runs."""
    with server.http() as client:
        children = client.post("/flow_runs/filter", json={
            "flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
        children.raise_for_status()
        ids = [flow_run_id, *(str(child["id"]) for child in children.json())]
        tasks = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": ids}}})
        tasks.raise_for_status()
        return {str(t["name"]): str((t.get("state") or {}).get("type")) for t in tasks.json()}


def flow_run_logs(server: PrefectServer, flow_run_id: str) -> list[str]:
    """Every log message of ``flow_run_id`` stored by the server, oldest first."""
    return [str(record["message"]) for record in log_records(server, [flow_run_id])]


def log_records(server: PrefectServer, flow_run_ids: list[str]) -> list[dict[str, Any]]:
    """Every log record of the flow runs ``flow_run_ids`` stored by the server, oldest first."""
    records: list[dict[str, Any]] = []
    with server.http() as client:
        while True:
            response = client.post("/logs/filter", json={
                "logs": {"flow_run_id": {"any_": flow_run_ids}}, "sort": "TIMESTAMP_ASC",
                "offset": len(records), "limit": 200})
            response.raise_for_status()
            page = response.json()
            records += page
            if len(page) < 200:
                return records


def clone_deployment(server: PrefectServer, deployment: str, *, name: str, pool: str,
                     **overrides: Any) -> str:
    """Create a copy of ``flow/deployment`` named ``name`` on work pool ``pool`` (``overrides``: other fields
    of the deployment, e.g. ``parameters`` or ``schedules``); returns its id."""
    with server.http() as client:
        found = client.get(f"/deployments/name/{deployment}")
        found.raise_for_status()
        source = found.json()
        body = {key: source[key] for key in ("flow_id", "entrypoint", "path", "pull_steps", "parameters",
                                             "parameter_openapi_schema", "job_variables", "tags",
                                             "enforce_parameter_schema")}
        body.update({"name": name, "work_pool_name": pool, **overrides})
        created = client.post("/deployments/", json=body)
        created.raise_for_status()
        deployment_id: str = created.json()["id"]
        return deployment_id


def trigger_deployment_id(server: PrefectServer, deployment_id: str, parameters: dict[str, Any]) -> str:
    """Create a flow run of the deployment ``deployment_id`` with ``parameters``; returns its id."""
    with server.http() as client:
        created = client.post(f"/deployments/{deployment_id}/create_flow_run",
                              json={"parameters": parameters})
        created.raise_for_status()
        flow_run_id: str = created.json()["id"]
        return flow_run_id


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (by parent links in /proc, so sessions and groups don't hide them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = parent_pid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def ancestors(pid: int) -> list[int]:
    chain: list[int] = []
    current = parent_pid(pid)
    while current not in (None, 0, 1) and len(chain) < 64:
        assert current is not None
        chain.append(current)
        current = parent_pid(current)
    return chain


def lose_machine(worker_pid: int, flow_run_id: str) -> list[int]:
    """A machine lost mid-run: the worker, everything under it and every process of ``flow_run_id`` are
    frozen (SIGSTOP, so none can react or report) and then SIGKILLed together. Returns the pids killed."""
    import contextlib
    import os
    import signal

    victims = {worker_pid} | descendants(worker_pid) | set(flow_run_pids(flow_run_id))
    for pid in list(victims):
        victims |= descendants(pid)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in sorted(victims):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    return sorted(victims)


def deployment_runs(server: PrefectServer, deployment_id: str) -> list[dict[str, Any]]:
    """Every flow run of the deployment ``deployment_id``, by expected start time."""
    with server.http() as client:
        response = client.post("/flow_runs/filter", json={
            "flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"})
        response.raise_for_status()
        runs: list[dict[str, Any]] = response.json()
        return runs


def run_logs(server: PrefectServer, flow_run_id: str) -> list[str]:
    """The log lines of ``flow_run_id`` and of its subflow runs (phases), oldest first, each as
    ``LEVEL message`` (what the UI shows on the run's and its subflows' pages)."""
    import logging

    with server.http() as client:
        children = client.post("/flow_runs/filter", json={
            "flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
        children.raise_for_status()
        ids = [flow_run_id, *(str(child["id"]) for child in children.json())]
    return [f"{logging.getLevelName(int(r['level']))} {r['message']}" for r in log_records(server, ids)]
