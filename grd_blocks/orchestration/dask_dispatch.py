"""The Dask transport of a fan-out's driver (``remote_driver``: the invariants, the loop of tries): a try is a
future, its stop a ``Variable`` the worker watches (``dask_worker``), its messages one topic per client.

Invariants (beyond ``remote_driver``'s):

- A try whose worker is lost is found two ways: Dask re-runs the task elsewhere and it finds its claim
  (``Lost``), or Dask gives up on it (``KilledWorker``); the task is submitted with ``retries=0``.
- A scheduler that goes away ends the tries in flight as lost once the client gives up reconnecting (Dask's
  reconnect timeout, 10 s by default); they are not retried on that client, and the next dispatch to that
  address makes a new one. A scheduler that does not accept the client within ``CONNECT_S`` is a
  ``DispatchError`` naming the address and the fix.
- One client per scheduler address per process, made on first use and closed at exit (or once the last
  command in flight on it ended); one topic per client carries every dispatch's messages, routed by token.
  Concurrency is the caller's: the engine runs at most ``max_parallel`` of a phase's commands at once, so
  that is the phase's concurrency on the whole cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import threading
import uuid
from typing import Any

from distributed import Client, Future, Variable
from distributed.client import FutureCancelledError

from grd_blocks.errors import DispatchError
from grd_blocks.orchestration.dask_worker import run_on_worker
from grd_blocks.orchestration.execute import CommandPlan, LineSink, not_started
from grd_blocks.orchestration.plan import DaskTarget
from grd_blocks.orchestration.remote import Lost, NotStarted, Ran, RemoteRequest
from grd_blocks.orchestration.remote_driver import RemoteDriver, TryView
from grd_blocks.report import CommandReport

__all__ = ["CONNECT_S", "DaskDispatch", "close_dispatchers", "dispatch"]

CONNECT_S = 10.0  # how long a scheduler may take to accept the driver's client
SEND_S = 5.0  # how long sending a stop to the scheduler may take


class _Stream:
    """One dispatch's messages, handed from the client's event loop to the waiting thread."""

    def __init__(self) -> None:
        self.messages: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.wake = threading.Event()

    def put(self, message: dict[str, Any]) -> None:
        self.messages.put(message)
        self.wake.set()

    def drain(self) -> list[dict[str, Any]]:
        found = []
        while True:
            try:
                found.append(self.messages.get_nowait())
            except queue.Empty:
                return found


class DaskDispatch(RemoteDriver[Future]):
    """Runs command plans on the Dask cluster at ``address`` (module docstring: invariants)."""

    engine = "Dask"
    kind = "Dask worker"

    def __init__(self, address: str, *, connect_s: float | None = None) -> None:
        self.address = address
        connect_s = CONNECT_S if connect_s is None else connect_s
        try:
            self.client = Client(address, timeout=connect_s, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise DispatchError(
                f"cannot reach the Dask scheduler at {address} within {connect_s:.0f}s ({exc}); start it "
                "(dask scheduler), or fix the address (the spec's runner.dask, the dask_scheduler parameter "
                "or GRD_DASK_SCHEDULER)"
            ) from exc
        self.topic = f"grd-output-{uuid.uuid4().hex}"
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._running = 0  # commands in flight: a close waits for the last of them
        self._closing = False
        self.client.subscribe_topic(self.topic, self._route)

    def _route(self, event: tuple[float, dict[str, Any]]) -> None:
        message = event[1]
        with self._lock:
            stream = self._streams.get(str(message.get("t")))
        if stream is not None:
            stream.put(message)

    @property
    def connected(self) -> bool:
        """False once the client gave up its scheduler (it closes itself after its reconnect timeout)."""
        return str(self.client.status) not in ("closing", "closed")

    def enter(self) -> None:
        """Count one more command in flight (``run`` does; ``dispatcher`` does it for the command it hands
        the dispatcher to, so no close comes between)."""
        with self._lock:
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            last = self._closing and self._running == 0
        if last:
            self.client.close()

    def close(self) -> None:
        """Close the client now, or once the commands still in flight have ended (a run's end may come
        while a stopped command's ladder still runs on its worker)."""
        with self._lock:
            self._closing = True
            idle = self._running == 0
        if idle:
            self.client.close()

    # --- the transport --------------------------------------------------------------------------------------

    def target(self, plan: CommandPlan) -> DaskTarget:
        assert plan.dask is not None
        return plan.dask

    def unusable(self) -> str | None:
        return None if self.connected else f"the Dask scheduler at {self.address} does not answer"

    def submit(self, plan: CommandPlan, request: RemoteRequest) -> Future:
        stream = _Stream()
        with self._lock:
            self._streams[request.token] = stream
        key = f"grd-{plan.label}-{request.token}"
        future: Future = self.client.submit(run_on_worker, request, key=key, pure=False, retries=0)
        future.add_done_callback(lambda _: stream.wake.set())
        return future

    def done(self, handle: Future) -> bool:
        return bool(handle.done())

    def take(self, request: RemoteRequest, handle: Future, wait_s: float) -> list[dict[str, Any]] | str:
        with self._lock:
            stream = self._streams[request.token]
        if wait_s > 0:
            stream.wake.wait(wait_s)
        stream.wake.clear()
        messages = stream.drain()
        if not messages and not self.connected:
            return f"the Dask scheduler at {self.address} went away (the client gave up reconnecting)"
        return messages

    def send_stop(self, request: RemoteRequest, reason: str) -> None:
        Variable(request.stop, client=self.client).set(reason, callback_timeout=SEND_S)

    def cancel(self, handle: Future) -> None:
        handle.cancel()

    def result(self, handle: Future, seen: TryView) -> Ran | NotStarted | Lost | str:
        try:
            answer: Ran | NotStarted | Lost = handle.result()
        except FutureCancelledError as exc:
            return f"the cluster cancelled the try ({exc})"
        except Exception as exc:  # KilledWorker, or the task failed before the command could start
            return f"try on {seen.where} failed: {type(exc).__name__}: {exc}"
        return answer

    def forget(self, request: RemoteRequest) -> None:
        with self._lock:
            self._streams.pop(request.token, None)
        for name in (request.claim, request.stop):
            with contextlib.suppress(Exception):  # a scheduler gone keeps nothing to delete
                Variable(name, client=self.client).delete()


_DISPATCHERS: dict[str, DaskDispatch] = {}
_DISPATCHERS_LOCK = threading.Lock()


def dispatcher(address: str) -> DaskDispatch:
    """This process's dispatcher for ``address`` (made on first use; ``DispatchError`` if unreachable),
    counted as in flight until the caller's ``leave()``."""
    with _DISPATCHERS_LOCK:
        found = _DISPATCHERS.get(address)
        if found is None or not found.connected:  # a scheduler that went away may be back
            found = _DISPATCHERS[address] = DaskDispatch(address)
        found.enter()
        return found


def close_dispatchers() -> None:
    """Close every client this process made (at exit; a later dispatch makes a new one)."""
    with _DISPATCHERS_LOCK:
        dispatchers = list(_DISPATCHERS.values())
        _DISPATCHERS.clear()
    for found in dispatchers:
        found.close()


atexit.register(close_dispatchers)


def dispatch(plan: CommandPlan, *, on_line: LineSink | None = None) -> CommandReport:
    """Run ``plan`` on its Dask target (``plan.dask``) and return its row; never raises ``GrdError``."""
    assert plan.dask is not None
    try:
        found = dispatcher(plan.dask.address)
    except DispatchError as exc:
        return not_started(plan, plan.budget.remaining(), str(exc))
    try:
        return found.run(plan, on_line=on_line)
    finally:
        found.leave()

