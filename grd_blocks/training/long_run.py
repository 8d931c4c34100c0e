"""Long-run approval for a training run: estimate, ask (or reuse the run key's decision), and bound the run.

Invariant: with no ``approval_budget`` nothing is asked and nothing is bounded (``None``). Otherwise the run
gets a ``Budget`` that its pacer saves and stops before: the default budget when the estimate fits it (or
when nothing says how long an epoch takes: then the run may not exceed the default budget without a
person's approval, and once it has measured its epochs a retry asks), else the limit ``require_approval``
returned (asked in the Prefect UI, ``grd approve``, ``auto_approve``, or reused from an earlier attempt of
the same run key, which is never asked twice). Each attempt is bounded by the full limit from its own start.
"""

from __future__ import annotations

import logging

from grd_blocks.budget import Budget, format_duration, parse_duration
from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.training.config import TrainConfig
from grd_blocks.training.data import batches_per_epoch
from grd_blocks.training.estimate import RunEstimate, estimate_remaining
from grd_blocks.training.resume import CheckpointUrl

__all__ = ["approve_training"]

logger = logging.getLogger("grd.training")


def approve_training(
    config: TrainConfig,
    run_key: str,
    checkpoints: RunCheckpoints,
    *,
    approval_budget: str | float | None,
    auto_approve: bool = False,
    store: object = None,
    resume_from: CheckpointUrl | None = None,
) -> Budget | None:
    """The budget run ``run_key`` may use (None: unbounded); pauses the flow run when approval is needed.

    ``store``: where the decision is kept (the run's ``CheckpointStore`` block, so retries see it).
    Raises ``ApprovalRejected`` / ``ApprovalExpired`` (see ``grd_blocks.approval``) and ``DurationError``
    for a malformed ``approval_budget``.
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
    limit_s = _limit(run_key, estimate, default_s, auto_approve=auto_approve, store=store)
    return Budget.after(limit_s, name=f"approved run {run_key}", level="run")


def _limit(
    run_key: str,
    estimate: RunEstimate,
    default_s: float,
    *,
    auto_approve: bool,
    store: object,
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
    from grd_blocks.approval import require_approval

    approval = require_approval(run_key, total, default_s, auto_approve=auto_approve, store=store)
    logger.info(
        "run %s: %.2f epochs left at %.3gs each (%s) = %s; limit %s (%s)",
        run_key,
        estimate.epochs_left,
        estimate.epoch_s,
        estimate.source,
        format_duration(total),
        format_duration(approval.limit_s),
        approval.who,
    )
    return approval.limit_s
