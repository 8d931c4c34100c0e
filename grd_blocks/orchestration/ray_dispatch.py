"""The Ray transport of a fan-out's driver (``remote_driver``: the invariants, the loop of tries): a try is a
Ray task, its messages and stop go through the dispatcher's hub actor (``ray_worker``).

Invariants (beyond ``remote_driver``'s):

- The task is submitted with ``max_retries=0``: Ray never re-runs it, so a try whose worker process or node
  is lost ends in a ``RayError`` and the driver alone decides on another try. A try given up is also
  cancelled with ``ray.cancel(force=True)``.
- Ray connects a process to one cluster: the first dispatch connects (``ray.init``) and makes the hub; a
  dispatch to another address in the same process is FAILED naming both.
- Connecting is bounded: before ``ray.init`` (which waits without limit for an address that accepts a
  connection and never answers), the address must accept a TCP connection and answer as a gRPC server does
  (its HTTP/2 SETTINGS frame) within ``CONNECT_S``; otherwise every command dispatched to it is FAILED with
  one reason naming the address, the limit and the fix, logged once, and a dispatch within ``CONNECT_S`` of
  that failure reuses it rather than waiting again (a phase's commands do not each wait). ``auto`` is not
  probed (Ray finds the cluster this machine is part of). A ``ray://`` address (Ray Client) needs
  ``ray[client]`` here; without it every command is FAILED saying so. ``max_parallel`` is the phase's
  concurrency on the whole cluster (the engine runs at most that many at once); ``num_cpus``/``num_gpus``
  are the task's Ray resources, so Ray places it where they are free.
- The driver's signals stay the run's: Ray's C++ failure signal handler (absl's) is not installed in the
  process that connects. In a driver it turns the SIGTERM of a cancel into a crash report in the run's log and
  an abort ~3 s later (its alarm), which cut the run's stop path (kill ladders, report, cleanups) short. A
  process that called ``ray.init`` itself before grd keeps what Ray installed there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import socket
import threading
import time
from typing import Any

import ray
import ray._private.ray_constants as ray_constants
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from grd_blocks.errors import DispatchError
from grd_blocks.orchestration.execute import CommandPlan, LineSink, not_started
from grd_blocks.orchestration.plan import RayTarget
from grd_blocks.orchestration.ray_worker import Hub, run_on_ray
from grd_blocks.orchestration.remote import Lost, NotStarted, Ran, RemoteRequest
from grd_blocks.orchestration.remote_driver import RemoteDriver, TryView
from grd_blocks.report import CommandReport

__all__ = ["CONNECT_S", "RayDispatch", "close_dispatchers", "dispatch", "unreachable"]

log = logging.getLogger("grd.ray")

CONNECT_S = 10.0  # how long a Ray cluster's address may take to accept the driver's connection and answer
SEND_S = 5.0  # how long sending a stop to the hub may take
RAY_CLIENT_PORT = 10001  # the port of ray://HOST without one
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # preface, SETTINGS
_SETTINGS = 4


def _endpoint(address: str) -> tuple[str, int] | None:
    """Where the driver connects first for ``address`` (None for ``auto``)."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return rest.strip("[]"), RAY_CLIENT_PORT
    return host.strip("[]"), int(port)


def unreachable(address: str, connect_s: float) -> str | None:
    """Why the Ray cluster at ``address`` cannot be reached within ``connect_s`` (None: its address answers
    as a gRPC server, a GCS or a Ray Client server, does)."""
    endpoint = _endpoint(address)
    if endpoint is None:
        return None
    where = f"{endpoint[0]}:{endpoint[1]}"
    end = time.monotonic() + connect_s
    try:
        with socket.create_connection(endpoint, timeout=connect_s) as conn:
            conn.settimeout(max(0.001, end - time.monotonic()))
            conn.sendall(_HTTP2_HELLO)
            head = conn.recv(9)
    except TimeoutError:
        return f"{where} did not accept a connection and answer within {connect_s:g}s"
    except OSError as exc:
        return f"nothing accepted a connection to {where} ({type(exc).__name__}: {exc.strerror or exc})"
    if len(head) < 4 or head[3] != _SETTINGS:
        return f"{where} accepted a connection but did not answer as a Ray cluster (a gRPC server) does"
    return None

_TASK = ray.remote(max_retries=0, retry_exceptions=False)(run_on_ray)


class RayDispatch(RemoteDriver[Any]):
    """Runs command plans on the Ray cluster at ``address`` (module docstring: invariants)."""

    engine = "Ray"
    kind = "Ray node"
    topic = "ray-hub"

    def __init__(self, address: str, *, connect_s: float | None = None) -> None:
        self.address = address
        connect_s = CONNECT_S if connect_s is None else connect_s
        if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
            raise DispatchError(
                f"runner.ray {address!r} is a Ray Client address, and Ray Client needs ray[client] on the "
                f"machine running grd: pip install 'ray[client]=={ray.__version__}', or name the cluster's "
                "GCS (HOST:6379) from a machine that is one of its nodes"
            )
        why = unreachable(address, connect_s)
        if why is not None:
            raise DispatchError(
                f"cannot reach the Ray cluster at {address}: {why}; grd gives a cluster {connect_s:g}s to "
                "answer (ray_dispatch.CONNECT_S) and runs no command on it otherwise: start it (ray start "
                "--head), or fix the address (the spec's runner.ray or GRD_RAY_ADDRESS)"
            )
        try:
            if not ray.is_initialized():
                ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True  # read when the driver connects
                ray.init(address=address, namespace="grd", log_to_driver=False, configure_logging=False)
            here = ray.get_runtime_context().get_node_id()
            self.hub: Any = Hub.options(  # on the driver's node when it is one of the cluster's
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
        except (ConnectionError, RuntimeError, ValueError, RayError) as exc:
            raise DispatchError(
                f"cannot reach the Ray cluster at {address} ({type(exc).__name__}: {exc}); start it "
                "(ray start --head), or fix the address (the spec's runner.ray or GRD_RAY_ADDRESS)"
            ) from exc

    # --- the transport --------------------------------------------------------------------------------------

    def target(self, plan: CommandPlan) -> RayTarget:
        assert plan.ray is not None
        return plan.ray

    def submit(self, plan: CommandPlan, request: RemoteRequest) -> Any:
        target = self.target(plan)
        options: dict[str, Any] = {"name": f"grd-{plan.label}-{request.token[:8]}"}
        if target.num_cpus is not None:
            options["num_cpus"] = target.num_cpus
        if target.num_gpus is not None:
            options["num_gpus"] = target.num_gpus
        return _TASK.options(**options).remote(request, self.hub)

    def done(self, handle: Any) -> bool:
        ready, _ = ray.wait([handle], timeout=0)
        return bool(ready)

    def take(self, request: RemoteRequest, handle: Any, wait_s: float) -> list[dict[str, Any]] | str:
        try:
            return list(ray.get(self.hub.take.remote(request.token, wait_s)))
        except RayError as exc:
            return f"grd's hub on the Ray cluster is gone ({type(exc).__name__})"

    def send_stop(self, request: RemoteRequest, reason: str) -> None:
        try:
            ray.get(self.hub.set_stop.remote(request.token, reason), timeout=SEND_S)
        except GetTimeoutError as exc:
            raise TimeoutError(f"grd's hub took no stop within {SEND_S:g}s") from exc

    def cancel(self, handle: Any) -> None:
        ray.cancel(handle, force=True)

    def result(self, handle: Any, seen: TryView) -> Ran | NotStarted | Lost | str:
        try:
            answer: Ran | NotStarted | Lost = ray.get(handle)
        except RayError as exc:  # its worker process or node died, or Ray cancelled it
            return (f"its Ray worker was lost mid-command: try on {seen.where}{seen.ran_for()} "
                    f"({type(exc).__name__})")
        return answer

    def forget(self, request: RemoteRequest) -> None:
        self.hub.forget.remote(request.token)


_DISPATCHER: RayDispatch | None = None
_DISPATCHER_LOCK = threading.Lock()
_FAILED: dict[str, tuple[float, DispatchError]] = {}  # address -> when its connect failed, and how


def dispatcher(address: str) -> RayDispatch:
    """This process's dispatcher (made on first use; ``DispatchError`` if the cluster is unreachable or this
    process is connected to another one)."""
    global _DISPATCHER
    with _DISPATCHER_LOCK:
        if _DISPATCHER is not None and _DISPATCHER.address != address:
            raise DispatchError(
                f"this process is connected to the Ray cluster at {_DISPATCHER.address}, and Ray connects a "
                f"process to one cluster only: runner.ray {address!r} cannot be reached from it; name the "
                "same address in every phase of one run"
            )
        if _DISPATCHER is None:
            failed = _FAILED.get(address)
            if failed is not None and time.monotonic() - failed[0] < CONNECT_S:
                raise failed[1]
            try:
                _DISPATCHER = RayDispatch(address)
            except DispatchError as exc:
                _FAILED[address] = (time.monotonic(), exc)
                log.error("%s", exc)
                raise
            _FAILED.pop(address, None)
        return _DISPATCHER


def close_dispatchers() -> None:
    """Forget this process's dispatcher and disconnect from its cluster (a later dispatch connects again)."""
    global _DISPATCHER
    with _DISPATCHER_LOCK:
        found, _DISPATCHER = _DISPATCHER, None
    if found is not None:
        with contextlib.suppress(Exception):
            ray.kill(found.hub)
        ray.shutdown()


def dispatch(plan: CommandPlan, *, on_line: LineSink | None = None) -> CommandReport:
    """Run ``plan`` on its Ray target (``plan.ray``) and return its row; never raises ``GrdError``."""
    assert plan.ray is not None
    try:
        found = dispatcher(plan.ray.address)
    except DispatchError as exc:
        return not_started(plan, plan.budget.remaining(), str(exc))
    return found.run(plan, on_line=on_line)
