"""A command waits while too many of the process's Prefect events wait to be sent, wakes as they are taken,
never waits longer than its bound; and grd finds Prefect's own queue of events where it reads it."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest
from prefect import flow

from grd_blocks.prefect_edge import event_backlog
from grd_blocks.prefect_edge.event_backlog import event_queues, wait_for_event_delivery
from grd_blocks.prefect_edge.events import run_resumed


@flow(name="grd-event-backlog-test")
def emitting(run_key: str) -> int:
    run_resumed(run_key, attempt=2, detail={})
    return len(event_queues())


@pytest.mark.usefixtures("prefect_api")
def test_grd_finds_the_queue_prefect_keeps_its_events_to_send_in() -> None:
    # Prefect's internals grd reads (QueueService._instances, EventsWorker._queue, a queue.Queue): if another
    # Prefect keeps them elsewhere, this fails and the backlog bound does nothing until event_backlog follows
    assert emitting("backlog-test") >= 1
    assert all(isinstance(events, queue.Queue) for events in event_queues())


def _backlog(monkeypatch: pytest.MonkeyPatch, size: int) -> queue.Queue[Any]:
    """A stand-in for Prefect's queue of events (the real one drains as fast as the test server takes events,
    which a test cannot slow down for real), filled with ``size`` items."""
    events: queue.Queue[Any] = queue.Queue()
    for item in range(size):
        events.put(item)
    monkeypatch.setattr(event_backlog, "event_queues", lambda: [events])
    return events


def test_a_command_waits_while_the_backlog_is_over_the_bound_and_goes_on_once_it_is_taken_down_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = _backlog(monkeypatch, 30)
    taken: list[int] = []
    sizes_when_done: list[int] = []

    def sender() -> None:  # takes one event at a time, as Prefect's worker does, until the backlog is gone
        while not events.empty():
            taken.append(events.get())
            time.sleep(0.002)  # the API's pace (no test synchronises on it)

    def command() -> None:
        wait_for_event_delivery(limit=10, max_wait_s=60)
        sizes_when_done.append(events.qsize())

    waiter = threading.Thread(target=command)
    waiter.start()
    sending = threading.Thread(target=sender)
    sending.start()
    waiter.join()
    sending.join()
    assert len(sizes_when_done) == 1 and sizes_when_done[0] <= 10  # it went on only once down to the bound
    assert taken == list(range(30))


def test_a_command_waits_no_longer_than_its_bound_when_no_event_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _backlog(monkeypatch, 30)
    waited = wait_for_event_delivery(limit=10, max_wait_s=0.2)
    assert 0.2 <= waited < 30


def test_a_backlog_within_the_bound_costs_no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _backlog(monkeypatch, 10)
    assert wait_for_event_delivery(limit=10, max_wait_s=60) < 1.0 and events.qsize() == 10
