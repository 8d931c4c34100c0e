"""Budgets of a benchmark run: benchmark -> phase -> command, and the shielded budgets of cleanup commands.

Invariant: a command's effective deadline is min(its start + its timeout, its phase's effective deadline), and
a phase's is min(its start + its timeout, the benchmark's); with timeouts disabled every budget is unlimited.
Cleanup budgets are shielded children (they still run after their parent expired) and always bounded: the
cleanup's own timeout, or ``DEFAULT_CLEANUP_TIMEOUT_S``. Prefect's own timeouts are only a backstop set
``BACKSTOP_MARGIN_S`` beyond the budget plus grace, so grd's kill ladder always acts first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from grd_blocks.budget import Budget, Clock
from grd_blocks.spec import BenchmarkSpec, CommandSpec, PhaseSpec, resolve_command

DEFAULT_CLEANUP_TIMEOUT_S = 30.0
BACKSTOP_MARGIN_S = 30.0

__all__ = [
    "BACKSTOP_MARGIN_S",
    "DEFAULT_CLEANUP_TIMEOUT_S",
    "backstop_seconds",
    "benchmark_budget",
    "cleanup_budget",
    "cleanup_timeout",
    "command_budget",
    "phase_backstop_seconds",
    "phase_budget",
]


def benchmark_budget(
    spec: BenchmarkSpec, *, timeouts: bool, clock: Clock, limit_s: float | None = None
) -> Budget:
    """The root budget of a run, starting now: the spec's timeout, capped by an approved ``limit_s``."""
    seconds = spec.timeout if timeouts else None
    if timeouts and limit_s is not None:
        seconds = limit_s if seconds is None else min(seconds, limit_s)
    return Budget.after(seconds, name=spec.name, level="benchmark", clock=clock)


def phase_budget(parent: Budget, phase: PhaseSpec, *, timeouts: bool) -> Budget:
    """A phase's budget, starting now, bounded by the benchmark's."""
    return parent.child(phase.timeout if timeouts else None, name=phase.name, level="phase")


def command_budget(parent: Budget, spec: BenchmarkSpec, phase: PhaseSpec, command: CommandSpec, *,
                   timeouts: bool) -> Budget:
    """A command's budget, starting now, bounded by its phase's."""
    timeout = resolve_command(spec, phase, command).timeout_s if timeouts else None
    return parent.child(timeout, name=command.name, level="command")


def cleanup_timeout(command: CommandSpec, *, timeouts: bool) -> float | None:
    """The bound of a cleanup command: its own timeout, else the default; None when timeouts are disabled."""
    if not timeouts:
        return None
    return command.timeout if command.timeout is not None else DEFAULT_CLEANUP_TIMEOUT_S


def cleanup_budget(parent: Budget, command: CommandSpec, *, timeouts: bool) -> Budget:
    """A cleanup's budget: shielded from ``parent`` (which may have expired), bounded on its own."""
    seconds = cleanup_timeout(command, timeouts=timeouts)
    return parent.child(seconds, name=command.name, level="cleanup", shield=True)


def backstop_seconds(bound_s: float | None, grace_s: float) -> float | None:
    """Prefect's ``timeout_seconds`` for work that grd bounds by ``bound_s`` (None or inf: no backstop)."""
    if bound_s is None or math.isinf(bound_s):
        return None
    return max(0.0, bound_s) + grace_s + BACKSTOP_MARGIN_S


def phase_backstop_seconds(spec: BenchmarkSpec, phase: PhaseSpec, benchmark: Budget, *,
                           timeouts: bool) -> float | None:
    """Prefect's ``timeout_seconds`` for a phase subflow: its bound + longest grace + its cleanup's bound."""
    if not timeouts:
        return None
    bound = min(phase.timeout if phase.timeout is not None else math.inf, benchmark.remaining())
    graces: Iterable[float] = (resolve_command(spec, phase, c).grace_s for c in phase.commands)
    grace = max(graces, default=0.0)
    if phase.cleanup is not None:
        bound += cleanup_timeout(phase.cleanup, timeouts=True) or 0.0
        grace += resolve_command(spec, phase, phase.cleanup).grace_s
    return backstop_seconds(bound, grace)
