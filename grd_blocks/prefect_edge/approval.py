"""Long-run approval: a run estimated beyond its default budget waits for a person (or CI) to allow it.

Invariant: ``require_approval`` returns an approved ``Approval`` only if the estimate fits the default
budget, an earlier attempt with the same run key was approved (the ledger in the checkpoint store says so),
``auto_approve`` was passed, or someone answered the paused flow run's form (Prefect UI, or ``grd approve``)
with approve=true. A rejection raises ``ApprovalRejected`` and holds for the run key, like an approval; an
unanswered request raises ``ApprovalExpired`` and a retry asks again. Every request and decision is
committed to the ledger (``{store}/{run_key}/approval``) BEFORE the run goes on, and republished as the
audit artifact ``grd-approval-<run key>``. The rules that decide without a person are the core's
(``budget.approval.estimate_fits`` and ``settle``); this module adds the person: the paused run's form.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from grd_blocks.budget.approval import AskApproval, estimate_fits, settle
from grd_blocks.budget.ledger import ApprovalLedger, ApprovalRecord, RecordKind, utc_now
from grd_blocks.errors import ApprovalExpired, ApprovalRejected, UsageError
from grd_blocks.prefect_edge.artifacts import publish_approval_audit
from grd_blocks.prefect_edge.events import emit_grd_event
from grd_blocks.prefect_edge.ledger import open_ledger

__all__ = ["Approval", "ApprovalInput", "approval_asker", "approve_flow_run", "require_approval"]

_RunInput: Any
try:
    from prefect.input import RunInput as _RunInput
except ImportError:  # pragma: no cover - prefect is a dependency; keeps the type checker honest
    from pydantic import BaseModel as _RunInput


class ApprovalInput(_RunInput):  # type: ignore[misc]
    """The form a paused run shows in the Prefect UI (and what ``grd approve`` sends)."""

    approve: bool = Field(default=True, description="Allow this run to go past its default budget.")
    max_minutes: int = Field(default=60, ge=1, description="The longest the run may take, in minutes.")
    reason: str = Field(min_length=1, description="Why you decided so (kept in the audit artifact).")
    approver: str = Field(default="", description="Your name (kept in the audit artifact).")


@dataclass(frozen=True)
class Approval:
    """The decision; ``limit_s`` is the budget the run may use (the default budget when none was needed)."""

    approved: bool
    limit_s: float | None
    who: str
    reason: str
    decided_at: str
    estimate_s: float = 0.0
    asked: bool = False  # this call paused the run and waited for the answer
    reused: bool = False  # an earlier attempt's decision for the same run key


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return str(context.flow_run.id)


def _run_logger() -> Any:
    """The flow run's logger (its lines show on the run's page), or grd's own outside a run."""
    import logging

    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("grd.approval")


def _check(run_key: str, estimate_s: float, default_budget_s: float | None) -> None:
    from grd_blocks.checkpoint.storage.layout import validate_run_key

    validate_run_key(run_key)
    if not math.isfinite(estimate_s) or estimate_s < 0:
        raise UsageError(
            f"estimate {estimate_s!r}s for run {run_key!r} must be a finite number of seconds >= 0"
        )
    if default_budget_s is not None and (not math.isfinite(default_budget_s) or default_budget_s < 0):
        raise UsageError(
            f"default budget {default_budget_s!r}s for run {run_key!r} must be finite seconds >= 0, "
            "or None for no limit (then nothing needs approval)"
        )


def _record(ledger: ApprovalLedger, record: ApprovalRecord, default_budget_s: float | None) -> None:
    history = ledger.append(record)
    publish_approval_audit(ledger.run_key, history, default_budget_s=default_budget_s)
    event = "grd.approval.requested" if record.kind == "requested" else "grd.approval.decided"
    emit_grd_event(event, ledger.run_key, payload={**record.to_json(), "approved": record.kind == "approved"})


def _from_record(record: ApprovalRecord, *, asked: bool, reused: bool) -> Approval:
    return Approval(
        approved=record.kind == "approved",
        limit_s=record.limit_s,
        who=record.who,
        reason=record.reason,
        decided_at=record.at,
        estimate_s=record.estimate_s,
        asked=asked,
        reused=reused,
    )


def _describe(run_key: str, estimate_s: float, default_budget_s: float) -> str:
    return (
        f"**grd long-run approval** for run key `{run_key}`: estimated {estimate_s / 60:.1f} min, "
        f"default budget {default_budget_s / 60:.1f} min. Approve (and cap the run at *max minutes*) "
        "or reject; give a reason. The decision holds for this run key and its retries."
    )


def require_approval(
    run_key: str,
    estimate_s: float,
    default_budget_s: float | None,
    *,
    auto_approve: bool = False,
    store: object = None,
    timeout_s: int = 3600,
    poll_interval_s: int = 5,
) -> Approval:
    """Return the budget run ``run_key`` may use, pausing the flow run for a decision when it needs one.

    ``store``: where the decision is kept (a ``CheckpointStore`` block, a ``CheckpointEngine``, a block name
    or URL, or None for the default store); use the run's own store so retries on other workers see it.
    ``timeout_s``: how long the paused run waits for an answer before ``ApprovalExpired``.
    """
    _check(run_key, estimate_s, default_budget_s)
    if default_budget_s is None or estimate_fits(estimate_s, default_budget_s):
        return Approval(True, default_budget_s, "policy", "the estimate fits the default budget", utc_now(),
                        estimate_s=estimate_s)
    ledger = open_ledger(store, run_key)
    flow_run_id = _flow_run_id()
    settled = settle(ledger, estimate_s, auto_approve=auto_approve, flow_run_id=flow_run_id,
                     note=lambda record: _record(ledger, record, default_budget_s))
    if settled is not None:
        return _from_record(settled.record, asked=False, reused=settled.reused)
    if flow_run_id is None:
        raise UsageError(
            f"run {run_key!r} is estimated at {estimate_s:.0f}s, over its default budget of "
            f"{default_budget_s:.0f}s, and needs approval, but it is not inside a Prefect flow run that "
            "could pause; run it as a flow, pass auto_approve=True, or lower the estimate"
        )
    why = f"estimate exceeds the default budget of {default_budget_s:.0f}s"
    _record(ledger, ApprovalRecord("requested", utc_now(), "", estimate_s, None, why, flow_run_id),
            default_budget_s)
    form = ApprovalInput.with_initial_data(
        description=_describe(run_key, estimate_s, default_budget_s),
        approve=True,
        max_minutes=max(1, math.ceil(estimate_s / 60)),
    )
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    log = _run_logger()
    log.warning(
        "run %s is estimated at %.1f min, over its default budget of %.1f min: paused until someone "
        "approves it (within %.0f min). Answer with Resume on this run's page in the Prefect UI, or run: "
        "grd approve %s --minutes %d --reason TEXT  (--reject to refuse)",
        run_key, estimate_s / 60, default_budget_s / 60, timeout_s / 60, flow_run_id,
        max(1, math.ceil(estimate_s / 60)),
    )
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=poll_interval_s,
                                key=f"grd-approval-{uuid.uuid4().hex[:12]}")
    except FlowPauseTimeout:
        _record(ledger, ApprovalRecord("expired", utc_now(), "", estimate_s, None,
                                       f"no answer within {timeout_s}s", flow_run_id), default_budget_s)
        raise ApprovalExpired(
            f"run {run_key!r} waited {timeout_s}s for approval and nobody answered; retry the flow run "
            "to ask again, or answer sooner with `grd approve FLOW_RUN_ID --minutes N --reason TEXT`"
        ) from None
    who = answer.approver.strip() or "prefect-ui"
    kind: RecordKind = "approved" if answer.approve else "rejected"
    limit_s = answer.max_minutes * 60.0 if answer.approve else None
    decision = ApprovalRecord(kind, utc_now(), who, estimate_s, limit_s, answer.reason, flow_run_id)
    _record(ledger, decision, default_budget_s)
    if answer.approve:
        log.info("run %s approved by %s for %d min: %s", run_key, who, answer.max_minutes, answer.reason)
    else:
        log.warning("run %s rejected by %s: %s", run_key, who, answer.reason)
    if not answer.approve:
        raise ApprovalRejected(run_key, who=who, reason=answer.reason)
    return _from_record(decision, asked=True, reused=False)


def approve_flow_run(
    flow_run_id: str, *, minutes: int | None, reason: str, approver: str, reject: bool = False
) -> None:
    """Answer a flow run paused in ``require_approval`` (what ``grd approve`` calls); ``minutes`` (>= 1) is
    needed to approve and ignored when rejecting."""
    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    try:
        run_id = uuid.UUID(flow_run_id)
    except ValueError:
        raise UsageError(f"flow run id {flow_run_id!r} is not a UUID; copy it from the run's page or "
                         "`prefect flow-run ls`") from None
    if reject:
        minutes = None
    elif minutes is None:
        raise UsageError("--minutes is missing: say how long the run may take (e.g. --minutes 90), or pass "
                         "--reject to refuse it")
    elif minutes < 1:
        raise UsageError(f"--minutes {minutes} must be at least 1 (the longest the run may take)")
    if not reason.strip():
        raise UsageError("--reason is empty; say why (it is kept in the run's audit artifact)")
    run_input: dict[str, Any] = {"approve": not reject, "reason": reason, "approver": approver}
    if minutes is not None:  # a rejection sends the form's default, which nothing reads
        run_input["max_minutes"] = minutes
    try:
        resume_flow_run(run_id, run_input=run_input)
    except NotPausedError:
        raise UsageError(f"flow run {flow_run_id} is not paused, so there is nothing to approve; check its "
                         "state with `prefect flow-run inspect` (it may be answered already)") from None
    except ObjectNotFound:
        raise UsageError(f"no flow run {flow_run_id} at this Prefect API; check PREFECT_API_URL") from None
    except FlowPauseTimeout:
        raise ApprovalExpired(f"flow run {flow_run_id}'s approval request expired; retry the flow run to "
                              "ask again") from None




def approval_asker(*, auto_approve: bool, store: object) -> AskApproval:
    """The ``ask`` benchmarks and training runs get (``budget.approval.AskApproval``):
    ``require_approval`` with the decision kept in ``store``; returns the limit and who decided."""

    def ask(run_key: str, estimate_s: float, default_budget_s: float) -> tuple[float | None, str]:
        approval = require_approval(run_key, estimate_s, default_budget_s, auto_approve=auto_approve,
                                    store=store)
        return approval.limit_s, approval.who

    return ask
