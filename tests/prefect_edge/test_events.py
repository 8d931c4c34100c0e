"""grd events reach the Prefect API about ``grd.run.<run_key>`` and link the flow run that emitted them."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from grd_blocks.errors import UsageError
from grd_blocks.prefect_edge.events import (
    command_timed_out,
    emit_grd_event,
    flow_run_related,
    run_resource_id,
    run_resumed,
)

pytestmark = pytest.mark.usefixtures("prefect_api")


@flow(name="grd-events-test")
def emitting(run_key: str) -> str:
    from prefect.runtime import flow_run

    timeout = {"level": "command", "configured_s": 90, "survivors": 0}
    command_timed_out(run_key, "train", "fit", timeout=timeout)
    run_resumed(run_key, attempt=2, detail={"skipped": ["smoke.hello"]})
    return str(flow_run.id)


def read_events(run_key: str, want: int, timeout_s: float = 60) -> list[Any]:
    event_filter = EventFilter(
        resource=EventResourceFilter(id=[run_resource_id(run_key)]),
        event=EventNameFilter(prefix=["grd."]),
    )
    deadline = time.monotonic() + timeout_s
    events: list[Any] = []
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            events = list(client.read_events(filter=event_filter, limit=50).events)
        if len(events) >= want:
            return events
        time.sleep(0.5)
    raise AssertionError(f"only {len(events)} of {want} grd events for {run_key} arrived in {timeout_s}s")


def test_events_name_the_run_and_link_the_flow_run() -> None:
    flow_run_id = emitting("ev-run-1")
    events = read_events("ev-run-1", 2)
    by_name = {e.event: e for e in events}
    assert set(by_name) == {"grd.command.timed_out", "grd.run.resumed"}
    timed_out = by_name["grd.command.timed_out"]
    assert timed_out.resource["grd.run-key"] == "ev-run-1" and timed_out.resource["grd.phase"] == "train"
    assert timed_out.payload["configured_s"] == 90
    related = {r.id for r in timed_out.related}
    assert f"prefect.flow-run.{flow_run_id}" in related
    assert by_name["grd.run.resumed"].payload == {"attempt": 2, "skipped": ["smoke.hello"]}


def test_an_unknown_event_name_is_a_usage_error_naming_the_valid_ones() -> None:
    with pytest.raises(UsageError, match=r"grd\.checkpoint\.committed"):
        emit_grd_event("grd.something.else", "r1")


def test_outside_a_flow_run_there_is_no_flow_run_link() -> None:
    assert flow_run_related() == []
