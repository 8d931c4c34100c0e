"""A flow run's end does not wait out its heartbeat thread's sleep, and the heartbeats themselves are as
Prefect's: one as a run starts, then one per interval, none after its heartbeat context exited."""

from __future__ import annotations

import functools
import threading
import time
import types
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect import flow_engine as prefect_flow_engine
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.runtime import flow_run

import grd_blocks.prefect_edge.benchmark_flow  # noqa: F401  # importing a grd flow module installs it
from grd_blocks.prefect_edge import heartbeats
from grd_blocks.prefect_edge.heartbeats import HEARTBEAT_THREAD

from ._api import wait_for


class _Engine:
    """The four members of Prefect's flow run engine that its heartbeat context uses (a stand-in: a real
    engine's interval cannot be set below 30 s, which a test cannot wait out)."""

    def __init__(self, interval: int) -> None:
        self.heartbeat_seconds = interval
        self.flow_run: Any = None
        self.logger = types.SimpleNamespace(debug=lambda *args, **kwargs: None)
        self.emitted = 0
        self.first = threading.Event()
        self.after_exit = 0
        self.exited = False

    def _build_heartbeat_event_template(self) -> tuple[dict[str, str], list[Any]]:
        return {}, []

    def _emit_flow_run_heartbeat(self, resource: dict[str, str], related: list[Any]) -> None:
        self.emitted += 1
        self.after_exit += self.exited
        self.first.set()


def _heartbeats_of(engine: _Engine) -> Any:
    """The heartbeat context Prefect's flow engine enters for each flow run, as it would for ``engine``."""
    send: Any = prefect_flow_engine._send_heartbeats
    return send(engine)


def _heartbeat_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == HEARTBEAT_THREAD]


@pytest.fixture
def sleep_never_returns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Prefect's flow engine module sees a ``time.sleep`` that returns only at teardown (a heartbeat that
    waits in steps would then never see its run end)."""
    released = threading.Event()
    stuck = types.SimpleNamespace(monotonic=time.monotonic, time=time.time, sleep=lambda _: released.wait())
    monkeypatch.setattr(prefect_flow_engine, "time", stuck, raising=False)
    yield
    released.set()


def test_grd_runs_prefects_flow_run_heartbeats_through_its_own_context() -> None:
    # if another Prefect has no ``_send_heartbeats(engine, join_on_exit)``, grd keeps Prefect's own and this
    # fails: every flow run's end then waits for the rest of a 1 s sleep again (heartbeats.py)
    assert heartbeats.install()
    assert prefect_flow_engine._send_heartbeats is heartbeats._heartbeats


@pytest.mark.usefixtures("sleep_never_returns")
def test_a_runs_end_ends_its_heartbeat_thread_without_waiting_for_a_sleep() -> None:
    engine = _Engine(interval=3600)
    context = _heartbeats_of(engine)
    context.__enter__()
    assert engine.first.wait(10), "the heartbeat thread sent no heartbeat as the run started"
    (thread,) = _heartbeat_threads()
    context.__exit__(None, None, None)
    engine.exited = True
    assert not thread.is_alive(), "the run's end left its heartbeat thread waiting"
    assert engine.emitted == 1 and engine.after_exit == 0


def test_heartbeats_repeat_at_the_interval_and_none_is_sent_after_the_run_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(prefect_flow_engine, "MINIMUM_HEARTBEAT_INTERVAL", 0)  # Prefect's floor is 30 s
    engine = _Engine(interval=0)
    engine.heartbeat_seconds = 0.001  # type: ignore[assignment]  # a float interval: beats every 1 ms
    with _heartbeats_of(engine):
        wait_for(lambda: engine.emitted >= 5, "five heartbeats", timeout_s=30)
        (thread,) = _heartbeat_threads()
    engine.exited = True
    assert not thread.is_alive()
    assert engine.after_exit == 0


def test_no_heartbeat_is_sent_for_a_run_already_in_a_final_state() -> None:
    engine = _Engine(interval=3600)
    engine.flow_run = types.SimpleNamespace(state=types.SimpleNamespace(is_final=lambda: True))
    with _heartbeats_of(engine):
        pass
    assert _heartbeat_threads() == []  # the exit joined it
    assert engine.emitted == 0


def test_heartbeats_are_off_when_prefect_has_no_interval() -> None:
    engine = _Engine(interval=0)
    engine.heartbeat_seconds = None  # type: ignore[assignment]  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY unset
    with _heartbeats_of(engine):
        assert _heartbeat_threads() == []
    assert engine.emitted == 0


@flow(name="grd-heartbeat-phase")
def _phase() -> str:
    return str(flow_run.id)


@flow(name="grd-heartbeat-run")
def _run() -> tuple[str, str]:
    return str(flow_run.id), _phase()


def _events(flow_run_id: str, name: str) -> list[Any]:
    event_filter = EventFilter(resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
                               event=EventNameFilter(name=[name]))
    with get_client(sync_client=True) as client:
        return list(client.read_events(filter=event_filter, limit=50).events)


@pytest.mark.usefixtures("prefect_api")
def test_a_flow_run_and_its_subflow_run_send_their_heartbeats_and_leave_no_heartbeat_thread() -> None:
    outer, inner = _run()
    assert _heartbeat_threads() == []  # each run's end ended its thread (Prefect's heartbeat is on: 180 s)
    for run_id in (outer, inner):
        UUID(run_id)
        beats = wait_for(functools.partial(_events, run_id, "prefect.flow-run.heartbeat"),
                         f"the heartbeat of flow run {run_id}")
        (completed,) = wait_for(functools.partial(_events, run_id, "prefect.flow-run.Completed"),
                                f"the Completed event of flow run {run_id}")
        assert len(beats) == 1  # one as it started; the next was 180 s away
        assert beats[0].occurred <= completed.occurred
