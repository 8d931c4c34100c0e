"""Nested time budgets (deadline engine) and human durations.

Invariant: a budget's effective deadline is min(own, parent's effective) unless shielded; deadlines are
absolute seconds on an injected monotonic clock; ``math.inf`` means none.
See ``budget.py`` for the full contract.
"""

from grd_blocks.budget.budget import Budget
from grd_blocks.budget.clock import Clock, FakeClock, default_clock
from grd_blocks.budget.durations import UNITS, format_duration, parse_duration

__all__ = ["UNITS", "Budget", "Clock", "FakeClock", "default_clock", "format_duration", "parse_duration"]
