"""The worker side of a Dask fan-out: one dispatched command, run on a Dask worker under grd's runner there.

The run itself is ``remote.run_remote`` (its docstring states the invariants: deadline as seconds left, the
runner's containment on this machine, at most one run per dispatch, the stop, the output); this module binds
its ``Channel`` to Dask:

- the claim is a ``Variable`` named after the dispatch's token (Dask re-running the task after its worker
  was lost finds it and returns ``Lost``);
- the stop is a ``Variable`` (``RemoteRequest.stop``) the dispatcher sets to ``deadline`` or ``cancel:
  REASON``, long-polled by the watcher; the task is no longer wanted once the scheduler released it (the
  driver's client is gone, e.g. `grd run` was SIGKILLed, or the driver abandoned the try);
- messages are published on the dispatcher's topic (``Worker.log_event``), tagged with the token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distributed import Variable, get_worker
from distributed.worker import thread_state

from grd_blocks.orchestration.remote import (
    DEADLINE,
    DONE,
    GONE,
    MAX_LOG_BYTES,
    STOP_POLL_S,
    Lost,
    NotStarted,
    Ran,
    RemoteRequest,
    run_remote,
)

__all__ = ["DEADLINE", "DONE", "GONE", "MAX_LOG_BYTES", "STOP_POLL_S", "Lost", "NotStarted", "Ran",
           "RemoteRequest", "run_on_worker"]

_UNWANTED = frozenset({"cancelled", "released", "forgotten"})


def _task_wanted() -> Callable[[], bool]:
    """Whether the task this thread runs is still wanted by the scheduler (read from the worker's state)."""
    worker, key = get_worker(), getattr(thread_state, "key", None)

    def wanted() -> bool:
        if key is None:  # not run by a worker's executor (nothing to ask)
            return True
        task = worker.state.tasks.get(key)
        return task is not None and task.state not in _UNWANTED

    return wanted


class _DaskChannel:
    """``remote.Channel`` on Dask: Variables for the claim and the stop, the topic for messages."""

    def __init__(self, request: RemoteRequest) -> None:
        self.worker = get_worker()
        self.request = request
        self.stop = Variable(request.stop)
        self._wanted = _task_wanted()

    def identity(self) -> tuple[str, str]:
        import socket

        return socket.gethostname(), self.worker.address

    def claim(self, host: str, worker: str) -> Lost | None:
        claim = Variable(self.request.claim)
        try:
            return Lost(str(claim.get(timeout=0)))
        except TimeoutError:
            claim.set(f"{host} {worker}")
            return None

    def send(self, message: dict[str, Any]) -> None:
        self.worker.log_event(self.request.topic, message)

    def read_stop(self, timeout: float) -> str | None:
        try:
            return str(self.stop.get(timeout=timeout))
        except TimeoutError:
            return None

    def set_done(self) -> None:
        self.stop.set(DONE)

    def wanted(self) -> bool:
        return self._wanted()


def run_on_worker(request: RemoteRequest) -> Ran | NotStarted | Lost:
    """Run ``request`` on this Dask worker (called by Dask; module docstring: invariants)."""
    return run_remote(request, _DaskChannel(request))
