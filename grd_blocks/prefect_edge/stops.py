"""Why a grd flow run was stopped, and whether Prefect will run it again.

Invariant: a flow that was stopped by a signal asks here before choosing its final state. ``cancel_requested``
is true when the run's SIGTERM came from a cancel (the UI's or the API's Cancel: the runner commits the
"cancel" intent before it signals, and the API shows the run Cancelling); ``supervisor_owns_stop`` is true
when the process that started the run decides its next state itself (``prefect flow-run execute`` with
``PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR`` = reschedule or relinquish), and the flow must then re-raise
instead of ending the run; ``retries_left`` counts the in-process retries Prefect still grants. None of them
raises: an unreachable API reads as "no cancel requested".
"""

from __future__ import annotations

from uuid import UUID

from prefect import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext

__all__ = ["cancel_requested", "flow_run_id", "retries_left", "supervisor_owns_stop"]

_SUPERVISOR_INTENTS = frozenset({"reschedule", "relinquish"})


def flow_run_id() -> str | None:
    """The id of the flow run this code runs in, or None outside one."""
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context is not None and context.flow_run is not None else None


def _intent() -> str | None:
    """The control intent Prefect's runner committed before it signalled this process (3.8's private control
    channel; None where it is absent or moved)."""
    try:
        from prefect._internal.control_listener import get_intent
    except ImportError:
        return None
    intent = get_intent()
    return None if intent is None else str(intent)


def supervisor_owns_stop() -> bool:
    """Whether the process supervising this run proposes its next state after a SIGTERM (see above)."""
    return _intent() in _SUPERVISOR_INTENTS


def cancel_requested() -> bool:
    """Whether someone asked Prefect to cancel this run (then its runner sends SIGTERM, like preemption)."""
    if _intent() == "cancel":
        return True
    run_id = flow_run_id()
    if run_id is None:
        return False
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(run_id)).state
    except Exception:  # the API being unreachable must not turn a saved stop into a crash
        return False
    return state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED)


def retries_left() -> int:
    """How many more attempts Prefect runs in this process if this one fails (0 outside a flow run)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return 0
    retries = context.flow_run.empirical_policy.retries or 0
    return max(0, retries - (context.flow_run.run_count - 1))
