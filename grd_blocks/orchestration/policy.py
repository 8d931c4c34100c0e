"""What runs next: the ``on_timeout`` policy, budget expiry and cancellation decide what is skipped.

Invariant: once a gate says stop it never reopens. A command that never started is SKIPPED (with the reason),
or CANCELLED when the run was cancelled. ``on_timeout``: ``continue`` runs the rest; ``stop_phase`` skips the
rest of the phase and stops the phase's commands still running (their budgets are children of the phase's,
which is cancelled with the reason: each goes down its kill ladder, on this machine or a remote worker, and
is reported CANCELLED with that reason), as a matrix's fail-fast does; ``stop_benchmark`` does the same and
skips every later phase. The phase's cleanups still run (their budgets are shielded). Failures do not stop
anything.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from grd_blocks.budget import Budget, format_duration
from grd_blocks.orchestration.status import Status
from grd_blocks.spec import OnTimeout

__all__ = ["PhaseGate", "RunGate", "Skip"]


@dataclass(frozen=True)
class Skip:
    """Why a command (or phase) does not start; ``budget_expired`` marks the node's budget as run out."""

    status: Status
    reason: str
    budget_expired: bool = False


def _expired_reason(budget: Budget) -> str:
    binding = budget.binding()
    return f"{binding.level} '{binding.name}' budget ({format_duration(binding.configured_s)}) expired"


class RunGate:
    """Benchmark-wide stop state: the cancellation of the run's budget and ``stop_benchmark``. Thread-safe."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._stopped: str | None = None

    def stop(self, reason: str) -> None:
        """Skip everything not yet started (idempotent: the first reason is kept)."""
        with self._lock:
            if self._stopped is None:
                self._stopped = reason

    def skip(self) -> Skip | None:
        """Why nothing more may start in this benchmark, or None."""
        if self.budget.cancelled:
            return Skip(Status.CANCELLED, "the run was cancelled before this started")
        with self._lock:
            if self._stopped is not None:
                return Skip(Status.SKIPPED, self._stopped)
        if self.budget.expired():
            return Skip(Status.SKIPPED, _expired_reason(self.budget), budget_expired=True)
        return None

    def phase(self, budget: Budget) -> PhaseGate:
        """The gate of one phase, whose budget is ``budget``."""
        return PhaseGate(self, budget)


class PhaseGate:
    """Stop state of one phase on top of its run's. Thread-safe."""

    def __init__(self, run: RunGate, budget: Budget) -> None:
        self.run = run
        self.budget = budget
        self._lock = threading.Lock()
        self._stopped: str | None = None
        self.budget_expired = False

    def observe(self, phase: str, command: str, status: Status, on_timeout: OnTimeout) -> None:
        """Apply ``on_timeout`` after ``command`` ended in ``status``."""
        if status is not Status.TIMEOUT or on_timeout == "continue":
            return
        reason = f"on_timeout={on_timeout} after '{phase}.{command}' timed out"
        if on_timeout == "stop_benchmark":
            self.run.stop(reason)
        with self._lock:
            if self._stopped is None:
                self._stopped = reason
        self.budget.cancel(reason)  # the phase's running commands: stopped within their grace

    def skip(self) -> Skip | None:
        """Why the next command of this phase may not start, or None."""
        run_skip = self.run.skip()
        if run_skip is not None and not run_skip.budget_expired:
            return run_skip
        with self._lock:
            if self._stopped is not None:
                return Skip(Status.SKIPPED, self._stopped)
        if self.budget.expired():
            self.budget_expired = True
            return Skip(Status.SKIPPED, _expired_reason(self.budget), budget_expired=True)
        return None
