"""When a framework's training loop must save and stop, and how it then leaves (shared by the integrations).

Invariants (those of ``ResumableTraining``, for loops grd does not drive):

* ``install()`` (main thread) turns SIGTERM, SIGINT and grd's warning signal into a stop request and makes an
  uncaught ``TrainingInterrupted`` exit with its code (124 deadline, 143 SIGTERM, 130 SIGINT).
* ``reason()`` is asked at every step boundary on every rank; ranks agree (an all-reduce of their codes), so
  all stop at the same step: ``"deadline"`` when grd's warning arrived or the pacer says one more step and a
  save no longer fit before the budget, ``"preempted"`` / ``"cancelled"`` for SIGTERM / SIGINT.
* ``stopped(...)`` is called once the stop checkpoint is committed: under grd it ignores later stop signals
  (so grd's own SIGTERM cannot turn exit 124 into -15), marks a deadline stop in ``GRD_TIMEOUT_FILE`` (so
  a launcher's rewrite of 124 cannot turn it into FAILED) and returns the error to raise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from grd_blocks.budget.stop_file import mark_budget_stop
from grd_blocks.errors import TrainingInterrupted, TrainingTimedOut
from grd_blocks.training import dist
from grd_blocks.training.leaving import install_excepthook, note_stop
from grd_blocks.training.pacing import Pacer
from grd_blocks.training.shutdown import GracefulShutdown

REASONS = ("", "preempted", "cancelled", "deadline")


class StopPolicy:
    """Step and save timing, signals and the budget of one framework-driven training run."""

    def __init__(
        self,
        *,
        pacer: Pacer | None = None,
        shutdown: GracefulShutdown | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pacer = pacer or Pacer.from_sources(clock=clock)
        self.shutdown = shutdown or GracefulShutdown()
        self.clock = clock
        self._boundary_at: float | None = None

    def install(self) -> None:
        self.shutdown.install()
        install_excepthook()
        self._boundary_at = self.clock()

    def uninstall(self) -> None:
        self.shutdown.uninstall()

    def step_started(self) -> None:
        """The clock for the next step starts here (after a resume, a save or an evaluation)."""
        self._boundary_at = self.clock()

    def step_ended(self) -> None:
        now = self.clock()
        if self._boundary_at is not None:
            self.pacer.step.observe(now - self._boundary_at)
        self._boundary_at = now

    def save_took(self, seconds: float) -> None:
        self.pacer.save.observe(seconds)

    def reason(self) -> str:
        """The agreed reason to stop now ('' to go on); a collective when torch.distributed is initialized."""
        code = 0
        if self.shutdown.requested:
            code = REASONS.index(self.shutdown.reason or "preempted")
        elif self.pacer.should_stop():
            code = REASONS.index("deadline")
        return REASONS[dist.agree_max([code])[0]]

    def stopped(self, reason: str, *, global_step: int, checkpoint_url: str | None) -> TrainingInterrupted:
        """The stop is committed: absorb later stop signals (under grd); the error to raise."""
        if os.environ.get("GRD_RUN_KEY"):
            self.shutdown.absorb()
        if reason == "deadline":
            mark_budget_stop()  # on every rank: a launcher may turn this exit's 124 into 1
        error = TrainingTimedOut if reason == "deadline" else TrainingInterrupted
        detail = self.pacer.describe() if reason == "deadline" else ""
        return note_stop(error(reason, global_step=global_step, checkpoint_url=checkpoint_url, detail=detail))
