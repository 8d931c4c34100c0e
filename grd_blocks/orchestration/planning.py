"""Budgets of a benchmark run: benchmark -> phase -> command, and the shielded budgets of cleanup commands.

Invariant: a command's effective deadline is min(its start + its timeout, its phase's effective deadline), and
a phase's is min(its start + its timeout, the benchmark's); with timeouts disabled every budget is unlimited
(plan.py drops the timeouts). Cleanup budgets are shielded children (they still run after their parent
expired or was cancelled) and always bounded while timeouts are on: the cleanup's own timeout, or
``DEFAULT_CLEANUP_TIMEOUT_S``. Prefect's own timeouts are only a backstop set ``BACKSTOP_MARGIN_S`` beyond
the budget plus grace, so grd's kill ladder always acts first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from grd_blocks.budget import Budget, Clock

if TYPE_CHECKING:
    from grd_blocks.orchestration.plan import BenchmarkPlan, PhasePlan, PlannedCommand

DEFAULT_CLEANUP_TIMEOUT_S = 30.0
BACKSTOP_MARGIN_S = 30.0

__all__ = [
    "BACKSTOP_MARGIN_S",
    "DEFAULT_CLEANUP_TIMEOUT_S",
    "backstop_seconds",
    "benchmark_budget",
    "cleanup_timeout",
    "command_budget",
    "phase_backstop_seconds",
    "phase_budget",
]


def benchmark_budget(plan: BenchmarkPlan, *, clock: Clock, limit_s: float | None = None) -> Budget:
    """The root budget of a run, starting now: the plan's timeout, capped by an approved ``limit_s``."""
    seconds = plan.timeout_s
    if plan.timeouts and limit_s is not None:
        seconds = limit_s if seconds is None else min(seconds, limit_s)
    return Budget.after(seconds, name=plan.name, level="benchmark", clock=clock)


def phase_budget(parent: Budget, phase: PhasePlan) -> Budget:
    """A phase's budget, starting now, bounded by the benchmark's."""
    return parent.child(phase.timeout_s, name=phase.name, level="phase")


def command_budget(parent: Budget, command: PlannedCommand) -> Budget:
    """A command's budget, starting now, bounded by its parent's; a cleanup's is shielded from its parent
    (which may have expired or been cancelled) and bounded on its own."""
    level = "cleanup" if command.cleanup else "command"
    return parent.child(command.timeout_s, name=command.name, level=level, shield=command.cleanup)


def cleanup_timeout(seconds: float | None, *, timeouts: bool) -> float | None:
    """The bound of a cleanup whose own timeout is ``seconds``: that, else the default; None when timeouts
    are disabled."""
    if not timeouts:
        return None
    return seconds if seconds is not None else DEFAULT_CLEANUP_TIMEOUT_S


def backstop_seconds(bound_s: float | None, grace_s: float) -> float | None:
    """Prefect's ``timeout_seconds`` for work that grd bounds by ``bound_s`` (None or inf: no backstop)."""
    if bound_s is None or math.isinf(bound_s):
        return None
    return max(0.0, bound_s) + grace_s + BACKSTOP_MARGIN_S


def phase_backstop_seconds(phase: PhasePlan, benchmark: Budget) -> float | None:
    """Prefect's ``timeout_seconds`` for a phase subflow: its bound + longest grace + its cleanup's bound."""
    bound = min(phase.timeout_s if phase.timeout_s is not None else math.inf, benchmark.remaining())
    grace = max((c.grace_s for c in phase.commands), default=0.0)
    if phase.cleanup is not None:
        bound += phase.cleanup.timeout_s or 0.0  # None only with timeouts off, when the bound is inf already
        grace += phase.cleanup.grace_s
    return backstop_seconds(bound, grace)
