"""Clocks that budgets read.

Invariant: a budget reads time only through the ``Clock`` it was given (``time.monotonic`` by default), so a
wall-clock jump (NTP step, DST, a user setting the date) never moves a deadline, and tests drive time by hand
with ``FakeClock`` instead of sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from grd_blocks.errors import BudgetError

Clock = Callable[[], float]
"""A monotonic clock: seconds as a float, never decreasing. ``time.monotonic`` is the default."""

__all__ = ["Clock", "FakeClock", "default_clock"]


def default_clock() -> float:
    """``time.monotonic()``: the clock every budget uses unless told otherwise."""
    return time.monotonic()


class FakeClock:
    """A monotonic clock moved only by ``advance``: for tests and simulations. Thread-safe.

    Invariant: the reading never decreases; ``advance`` refuses negative, NaN and infinite steps.
    """

    def __init__(self, start: float = 1000.0) -> None:
        if not math.isfinite(start):
            raise BudgetError(
                f"FakeClock start {start!r} is not finite; start at a finite number like 1000.0"
            )
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` and return the new reading."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise BudgetError(
                f"FakeClock.advance({seconds!r}): a monotonic clock only moves forward by a finite amount; "
                "pass a number >= 0"
            )
        with self._lock:
            self._now += seconds
            return self._now
