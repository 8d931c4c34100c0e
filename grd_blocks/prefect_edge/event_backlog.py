"""A phase does not outrun Prefect's event delivery: the flow process's memory stays bounded when its commands
end faster than the API takes their events.

Invariant: before a command's task run starts, while more than ``EVENT_BACKLOG`` of this process's Prefect
events wait to be sent, the command waits, woken each time one is taken for sending, for at most
``MAX_WAIT_S`` (then it starts anyway: an API that takes no events at all is the outage handling's to report,
not a reason to stall a phase). Why: Prefect's ``EventsWorker`` queues each event with a copy of the context
it was emitted in (the task run's context with it) and a task run emits three or more, so a phase of short
commands run several at a time, faster than the API takes their events, grew the flow's memory with its
length (figures: README, Scale). Where the API is the bottleneck a phase now goes at the pace it takes
events; the flow's events are sent before its process exits either way.

Reads Prefect's queue of events through ``QueueService`` internals (``_instances`` and the
``queue.Queue`` ``_queue``, whose ``not_full`` condition each ``get`` notifies, even of an unbounded queue);
when they are not as expected (another Prefect) it does not wait, and tests/prefect_edge/test_event_backlog.py
fails: it finds no queue of events in a real flow run.
"""

from __future__ import annotations

import queue
import time
from typing import Any

__all__ = ["EVENT_BACKLOG", "MAX_WAIT_S", "event_queues", "wait_for_event_delivery"]

EVENT_BACKLOG = 500
"""Most events of this process waiting to be sent before the next command waits."""

MAX_WAIT_S = 5.0
"""Longest a command waits for the backlog to shrink."""


def event_queues() -> list[queue.Queue[Any]]:
    """The queues of this process's running Prefect event workers (none if Prefect's internals differ)."""
    try:
        from prefect._internal.concurrency.services import _QueueServiceBase
        from prefect.events.worker import EventsWorker
    except ImportError:
        return []
    instances = getattr(_QueueServiceBase, "_instances", None)
    if not isinstance(instances, dict):
        return []
    queues = []
    for worker in list(instances.values()):
        events = getattr(worker, "_queue", None)
        if isinstance(worker, EventsWorker) and isinstance(events, queue.Queue):
            queues.append(events)
    return queues


def wait_for_event_delivery(limit: int = EVENT_BACKLOG, max_wait_s: float = MAX_WAIT_S) -> float:
    """Wait while more than ``limit`` events wait to be sent (``max_wait_s`` at most); the seconds waited."""
    started = time.monotonic()
    deadline = started + max_wait_s
    for events in event_queues():
        with events.not_full:  # the queue's lock (qsize() would take it again): a get() notifies it
            while len(events.queue) > limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                events.not_full.wait(left)
    return time.monotonic() - started
