"""The long-run approval policy, shared by benchmarks and training: when to ask, and what limit follows.

Invariant: with no approval budget nothing is asked and nothing is bounded (``None``); with no estimate
(a benchmark without a timeout, a training run that has measured no epoch) the run is capped at the approval
budget without asking, and a WARNING says why; otherwise the limit is what ``ask`` returns. ``ask`` decides
(the estimate fits, a recorded decision of the run key, a person): nothing here knows how a person is asked
(the Prefect edge passes its own, ``prefect_edge.approval.approval_asker``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grd_blocks.budget.durations import format_duration, parse_duration

__all__ = ["AskApproval", "Limit", "approved_limit"]

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
