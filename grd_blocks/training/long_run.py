"""Long-run approval for a training run: estimate, ask (or reuse the run key's decision), and bound the run.

Invariant: with no ``approval_budget`` nothing is asked and nothing is bounded (``None``). Otherwise the run
gets a ``Budget`` that its pacer saves and stops before: the default budget when the estimate fits it (or when
nothing says how long an epoch takes: then the run may not exceed the default budget without a person's
approval, and once it has measured its epochs a retry asks), else the limit ``ask`` returns (the policy is
``budget.approval``'s, the same as a benchmark's; the edge's ``ask`` asks in the Prefect UI or through ``grd
approve``, applies ``auto_approve``, or reuses the decision of an earlier attempt of the same run key, which
is never asked twice). Each attempt is bounded by the full limit from its own start. Nothing here knows how a
person is asked: the caller passes ``ask``.
"""

from __future__ import annotations

import logging

from grd_blocks.budget import Budget, format_duration, parse_duration
from grd_blocks.budget.approval import AskApproval, approved_limit
from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.training.config import TrainConfig
from grd_blocks.training.data import batches_per_epoch
from grd_blocks.training.estimate import estimate_remaining
from grd_blocks.training.resume import CheckpointUrl

__all__ = ["AskApproval", "approve_training"]

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
    if parse_duration(approval_budget, field="approval_budget") is None:
        return None
    estimate = estimate_remaining(
        config,
        checkpoints,
        steps_per_epoch=max(1, batches_per_epoch(config.samples, config.batch_size)),
        resume_from=resume_from,
    )
    decided = approved_limit(
        run_key, estimate.total_s, approval_budget, ask=ask, log=logger,
        no_estimate=f"run {run_key}: no epoch time measured and TrainConfig.estimated_epoch_s unset (set it "
        "to ask for approval up front)",
    )
    assert decided is not None  # an approval budget was given
    if estimate.total_s is not None:
        logger.info("run %s: %.2f epochs left at %.3gs each (%s) = %s; limit %s (%s)", run_key,
                    estimate.epochs_left, estimate.epoch_s, estimate.source,
                    format_duration(estimate.total_s), format_duration(decided.limit_s), decided.who)
    return Budget.after(decided.limit_s, name=f"approved run {run_key}", level="run")
