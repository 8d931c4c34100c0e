"""The long-run approval policy, shared by benchmarks and training: when to ask, and what limit follows.

Invariant: with no approval budget nothing is asked and nothing is bounded (``None``); with no estimate
(a benchmark without a timeout, a training run that has measured no epoch) the run is capped at the approval
budget without asking, and a WARNING says why; otherwise the limit is what ``ask`` returns. ``ask`` is the
edge's (``prefect_edge.approval.approval_asker``); it applies ``settle`` first, the rules that decide without
a person, in this order: the estimate fits the default budget (nothing recorded); a decision recorded for the
run key in its ledger holds for every later attempt (recorded as reused; a rejection is raised again);
``auto_approve`` approves the estimate (recorded). Only when ``settle`` returns None is a person asked, and
nothing here knows how.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grd_blocks.budget.durations import format_duration, parse_duration
from grd_blocks.budget.ledger import ApprovalLedger, ApprovalRecord, utc_now
from grd_blocks.errors import ApprovalRejected

__all__ = ["AskApproval", "Limit", "Settled", "approved_limit", "estimate_fits", "settle"]

AskApproval = Callable[[str, float, float], "tuple[float | None, str]"]
"""``ask(run_key, estimate_s, default_budget_s)``: the limit a person (or a recorded decision) allows, in
seconds (None: unlimited), and who decided; raises ``ApprovalRejected`` / ``ApprovalExpired`` when refused or
unanswered."""


@dataclass(frozen=True)
class Limit:
    """What the policy decided: the limit in seconds (None: unlimited) and who decided it."""

    limit_s: float | None
    who: str


def approved_limit(
    run_key: str,
    estimate_s: float | None,
    approval_budget: str | float | None,
    *,
    ask: AskApproval,
    no_estimate: str,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> Limit | None:
    """The limit of run ``run_key`` (None: no approval budget, so unbounded). ``no_estimate`` names why
    there is no estimate, for the warning. Raises what ``ask`` raises and ``DurationError`` for a malformed
    ``approval_budget``."""
    default_s = parse_duration(approval_budget, field="approval_budget")
    if default_s is None:
        return None
    if estimate_s is None:
        log.warning("%s: capped at its approval budget of %s without asking", no_estimate,
                    format_duration(default_s))
        return Limit(default_s, "policy")
    limit_s, who = ask(run_key, estimate_s, default_s)
    return Limit(limit_s, who)


def estimate_fits(estimate_s: float, default_budget_s: float | None) -> bool:
    """Whether a run estimated at ``estimate_s`` needs no approval (no default budget, or it fits)."""
    return default_budget_s is None or estimate_s <= default_budget_s


@dataclass(frozen=True)
class Settled:
    """A decision made without asking anyone: the record it rests on, and whether it was an earlier one."""

    record: ApprovalRecord
    reused: bool


def settle(
    ledger: ApprovalLedger,
    estimate_s: float,
    *,
    auto_approve: bool,
    flow_run_id: str | None,
    note: Callable[[ApprovalRecord], None],
) -> Settled | None:
    """Decide the approval of a run estimated at ``estimate_s`` (beyond its default budget) without a person,
    or None when a person must be asked. ``note`` records what was decided (the edge commits it to the ledger
    and publishes it). Raises ``ApprovalRejected`` when the run key's recorded decision is a rejection."""
    earlier = ledger.decision()
    if earlier is not None:
        note(ApprovalRecord("reused", utc_now(), earlier.who, estimate_s, earlier.limit_s,
                            f"decision of {earlier.at} holds for this run key", flow_run_id))
        if earlier.kind == "rejected":
            raise ApprovalRejected(ledger.run_key, who=earlier.who, reason=earlier.reason)
        return Settled(earlier, reused=True)
    if auto_approve:
        decision = ApprovalRecord("approved", utc_now(), "auto_approve", estimate_s, estimate_s,
                                  "auto_approve=True (CI)", flow_run_id)
        note(decision)
        return Settled(decision, reused=False)
    return None
