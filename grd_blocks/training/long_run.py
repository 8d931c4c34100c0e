"""Long-run approval for a training run: estimate, ask (or reuse the run key's decision), and bound the run.

Invariant: with no ``approval_budget`` nothing is asked and nothing is bounded (``None``). Otherwise the run
gets a ``Budget`` that its pacer saves and stops before: the default budget when the estimate fits it (or
when nothing says how long an epoch takes: then the run may not exceed the default budget without a
person's approval, and once it has measured its epochs a retry asks), else the limit ``require_approval``
returned by ``ask`` (the edge's: asked in the Prefect UI, ``grd approve``, ``auto_approve``, or reused from
an earlier attempt of the same run key, which is never asked twice). Each attempt is bounded by the full
limit from its own start. Nothing here knows how a person is asked: the caller passes ``ask``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from grd_blocks.budget import Budget, format_duration, parse_duration
from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.training.config import TrainConfig
from grd_blocks.training.data import batches_per_epoch
from grd_blocks.training.estimate import RunEstimate, estimate_remaining
from grd_blocks.training.resume import CheckpointUrl

__all__ = ["AskApproval", "approve_training"]

AskApproval = Callable[[str, float, float], "tuple[float | None, str]"]
"""``ask(run_key, estimate_s, default_budget_s)``: the limit a person (or a recorded decision) allows, in
seconds (None: unlimited), and who decided; raises ``ApprovalRejected`` / ``ApprovalExpired`` when refused or
unanswered."""

logger = logging.getLogger("grd.training")


def approve_training(
    config: TrainConfig,
    run_key: str,
    checkpoints: RunCheckpoints,
    *,
    approval_budget: str | float | None,
    ask: AskApproval,
    resume_from: CheckpointUrl | None = None,
) -> Budget | None:
    """The budget run ``run_key`` may use (None: unbounded); calls ``ask`` when approval is needed.

    Raises what ``ask`` raises (``ApprovalRejected`` / ``ApprovalExpired``) and ``DurationError`` for a
    malformed ``approval_budget``.
    """
    default_s = parse_duration(approval_budget)
    if default_s is None:
        return None
    estimate = estimate_remaining(
        config,
        checkpoints,
        steps_per_epoch=max(1, batches_per_epoch(config.samples, config.batch_size)),
        resume_from=resume_from,
    )
    limit_s = _limit(run_key, estimate, default_s, ask)
    return Budget.after(limit_s, name=f"approved run {run_key}", level="run")


def _limit(
    run_key: str,
    estimate: RunEstimate,
    default_s: float,
    ask: AskApproval,
) -> float | None:
    total = estimate.total_s
    if total is None:
        logger.warning(
            "run %s: no epoch time measured and TrainConfig.estimated_epoch_s unset, so the run is capped at "
            "the default budget %s without asking; set estimated_epoch_s to ask for approval up front",
            run_key,
            format_duration(default_s),
        )
        return default_s
    limit_s, who = ask(run_key, total, default_s)
    logger.info(
        "run %s: %.2f epochs left at %.3gs each (%s) = %s; limit %s (%s)",
        run_key,
        estimate.epochs_left,
        estimate.epoch_s,
        estimate.source,
        format_duration(total),
        format_duration(limit_s),
        who,
    )
    return limit_s
