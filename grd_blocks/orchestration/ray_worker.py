"""The worker side of a Ray fan-out: one dispatched command, run in a Ray task under grd's runner there.

The run itself is ``remote.run_remote`` (its docstring states the invariants: deadline as seconds left, the
runner's containment on this machine, at most one run per dispatch, the stop, the output); this module binds
its ``Channel`` to Ray through the dispatcher's ``Hub``, an async actor the driver owns (so it dies with the
driver):

- messages are pushed to the hub (``Hub.push``, fire and forget, in submission order from this process) and
  the driver long-polls them (``Hub.take``) while the command runs;
- the stop is a value per token on the hub the driver sets (``deadline`` or ``cancel: REASON``) and the
  watcher long-polls (``Hub.read_stop``); the run is no longer wanted once the hub is gone (the driver
  exited or was killed), so the watcher then stops the command within its grace. ``ray.cancel`` alone is
  not relied on: it kills the task's worker at most, never a command's escaped descendants — grd's runner
  here does that;
- the claim is on the hub too; the task is submitted with ``max_retries=0``, so Ray never re-runs it and the
  dispatcher alone decides on another try;
- a lost worker or driver leaves nothing running: a Ray worker process that dies mid-command (SIGKILL, OOM)
  closes the sockets of the guardian and keepers it started on this node, which run the ladder (SIGTERM, the
  command's grace, SIGKILL); a driver that dies (SIGKILL to `grd run`) takes its hub with it and its raylet
  ends the driver's tasks, so the tree is gone within its grace plus ``DRIVER_GONE_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import ray
from ray.exceptions import RayActorError

from grd_blocks.orchestration.remote import DONE, Lost, NotStarted, Ran, RemoteRequest, run_remote

__all__ = ["DRIVER_GONE_S", "Hub", "run_on_ray"]

DRIVER_GONE_S = 10.0
"""How long past its grace a command's tree may outlive a driver that died: Ray's notice (the raylet ends the
dead driver's tasks, its hub actor dies with it), the watcher's next poll (``remote.STOP_POLL_S``) and the
ladder's wait for the last SIGKILLed member (``process.ladder.KILL_WAIT_S``). Measured on 2 loaded cores:
0.02 s and 1.0 s (tests/orchestration/test_ray_stops.py)."""


class _HubState:
    """A dispatcher's per-token messages, stops and claims (the body of the ``Hub`` actor)."""

    def __init__(self) -> None:
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.stops: dict[str, str] = {}
        self.stopped: dict[str, asyncio.Event] = {}
        self.claims: dict[str, str] = {}

    @staticmethod
    def _event(events: dict[str, asyncio.Event], token: str) -> asyncio.Event:
        event = events.get(token)
        if event is None:
            event = events[token] = asyncio.Event()
        return event

    async def push(self, message: dict[str, Any]) -> None:
        token = str(message.get("t"))
        self.messages.setdefault(token, []).append(message)
        self._event(self.arrived, token).set()

    async def take(self, token: str, wait_s: float) -> list[dict[str, Any]]:
        """The messages of ``token`` so far, waiting at most ``wait_s`` for a first one."""
        event = self._event(self.arrived, token)
        if not self.messages.get(token) and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait_s)
        event.clear()
        return self.messages.pop(token, [])

    async def set_stop(self, token: str, value: str) -> None:
        self.stops[token] = value
        self._event(self.stopped, token).set()

    async def read_stop(self, token: str, wait_s: float) -> str | None:
        if token not in self.stops and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event(self.stopped, token).wait(), wait_s)
        return self.stops.get(token)

    async def claim(self, token: str, who: str) -> str | None:
        before = self.claims.get(token)
        if before is None:
            self.claims[token] = who
        return before

    async def forget(self, token: str) -> None:
        for table in (self.messages, self.arrived, self.stops, self.stopped, self.claims):
            table.pop(token, None)


Hub: Any = ray.remote(num_cpus=0, max_restarts=0)(_HubState)  # ray types an actor class loosely
"""The actor class a dispatcher makes one of (``ray_dispatch``)."""


class _RayChannel:
    """``remote.Channel`` on Ray: the dispatcher's hub carries the messages, the stop and the claim."""

    def __init__(self, request: RemoteRequest, hub: Any) -> None:
        self.request = request
        self.hub = hub
        self.hub_gone = False

    def identity(self) -> tuple[str, str]:
        return socket.gethostname(), ray.get_runtime_context().get_node_id()

    def claim(self, host: str, worker: str) -> Lost | None:
        before = ray.get(self.hub.claim.remote(self.request.token, f"{host} {worker}"))
        return None if before is None else Lost(str(before))

    def send(self, message: dict[str, Any]) -> None:
        self.hub.push.remote(message)

    def read_stop(self, timeout: float) -> str | None:
        try:
            value = ray.get(self.hub.read_stop.remote(self.request.token, timeout))
        except RayActorError:  # the driver that owns the hub is gone
            self.hub_gone = True
            raise
        return None if value is None else str(value)

    def set_done(self) -> None:
        self.hub.set_stop.remote(self.request.token, DONE)

    def wanted(self) -> bool:
        return not self.hub_gone


def run_on_ray(request: RemoteRequest, hub: Any) -> Ran | NotStarted | Lost:
    """Run ``request`` in this Ray task (called by Ray; module docstring: invariants)."""
    return run_remote(request, _RayChannel(request, hub))
