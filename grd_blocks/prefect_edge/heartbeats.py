"""A flow run's end is not held up by its heartbeat thread.

Prefect 3.8 runs every flow run (grd's benchmark and training flows, and each phase's subflow) inside
``prefect.flow_engine._send_heartbeats``: a thread emits ``prefect.flow-run.heartbeat`` when the run starts
and every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (180 by default, at least 30), sleeping in 1 s steps,
and the sync engine joins it when the run ends, so each flow run's end waited for the rest of a 1 s step:
0.5 s on average, once per phase and once per run (figures: README, Benchmarks).

Invariant: after ``install()`` (idempotent; done when grd's flow modules are imported) a flow run emits the
same heartbeats as under Prefect's own (one as it starts unless it already ended, then one per interval while
its state is not final, none once its heartbeat context has exited: the exit joins the thread, which is then
either finishing an emit already begun, as Prefect's join allows for, or done), and the exit no longer waits
out a sleep: the thread waits on the run's end itself. The join keeps Prefect's 2 s bound. When
``prefect.flow_engine`` has no ``_send_heartbeats`` taking ``(engine, join_on_exit)`` (another Prefect),
nothing is replaced and Prefect's own stays; tests/prefect_edge/test_heartbeats.py then fails, naming it.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["HEARTBEAT_THREAD", "JOIN_BOUND_S", "install"]

HEARTBEAT_THREAD = "grd-flow-run-heartbeat"
JOIN_BOUND_S = 2.0  # how long a run's end waits for an emit already under way (Prefect's bound)


@contextlib.contextmanager
def _heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """``_send_heartbeats`` whose thread waits on the run's end instead of sleeping in 1 s steps."""
    from prefect.flow_engine import MINIMUM_HEARTBEAT_INTERVAL

    interval = engine.heartbeat_seconds
    if interval is None:
        yield
        return
    interval = max(interval, MINIMUM_HEARTBEAT_INTERVAL)
    resource, related = engine._build_heartbeat_event_template()
    ended = threading.Event()

    def beat() -> None:
        while not ended.is_set():
            run = engine.flow_run
            if run is not None and run.state is not None and run.state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:  # a heartbeat that could not be sent is Prefect's to log, never the run's end
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            ended.wait(interval)

    # the thread sees the caller's context (its settings: the API it sends to), as Prefect's does
    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True,
                              name=HEARTBEAT_THREAD)
    thread.start()
    try:
        yield
    finally:
        ended.set()
        if join_on_exit:
            thread.join(JOIN_BOUND_S)


def install() -> bool:
    """Replace Prefect's heartbeat context with ``_heartbeats`` (once per process); False where Prefect's
    flow engine has no ``_send_heartbeats(engine, join_on_exit)`` to replace."""
    try:
        from prefect import flow_engine
    except ImportError:
        return False
    current = getattr(flow_engine, "_send_heartbeats", None)
    if current is _heartbeats:
        return True
    if current is None or not hasattr(flow_engine, "MINIMUM_HEARTBEAT_INTERVAL"):
        return False
    try:
        parameters = list(inspect.signature(current).parameters)
    except (TypeError, ValueError):
        return False
    if parameters != ["engine", "join_on_exit"]:
        return False
    flow_engine._send_heartbeats = _heartbeats
    return True
