"""Reading back what grd published to the test Prefect API (events, artifacts), with bounded polling."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from grd_blocks.prefect_edge.events import run_resource_id


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 90) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def read_events(run_key: str, name: str, want: int, timeout_s: float = 60) -> list[Any]:
    """Events ``name`` about ``grd.run.<run_key>``, once at least ``want`` of them have arrived."""
    event_filter = EventFilter(
        resource=EventResourceFilter(id=[run_resource_id(run_key)]), event=EventNameFilter(name=[name])
    )

    def fetch() -> list[Any]:
        with get_client(sync_client=True) as client:
            events = list(client.read_events(filter=event_filter, limit=50).events)
        return events if len(events) >= want else []

    events: list[Any] = wait_for(fetch, f"{want} {name} events of run {run_key}", timeout_s)
    return events


def artifact_versions(key: str) -> list[Any]:
    """Every version of the artifact ``key``, newest first."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created, reverse=True)


def table_rows(artifact: Any) -> list[dict[str, Any]]:
    """A table artifact's rows (Prefect stores the table as JSON text)."""
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert isinstance(data, list)
    return data


def paused_run_id(name: str) -> str | None:
    """The id of the flow run named ``name`` once it is Paused, else None."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    for run in runs:
        if run.state is not None and run.state.is_paused():
            return str(run.id)
    return None


def run_logs(flow_run_id: Any, until: str, timeout_s: float = 60) -> list[tuple[int, str]]:
    """The (level, message) records of a flow run and its task runs as the API serves them (what the run's
    page shows), once one of them contains ``until``: logs reach the API in batches."""

    def fetch() -> list[tuple[int, str]]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        records = [(log.level, log.message) for log in logs]
        return records if any(until in message for _, message in records) else []

    records: list[tuple[int, str]] = wait_for(fetch, f"{until!r} in the logs of flow run {flow_run_id}",
                                              timeout_s)
    return records
