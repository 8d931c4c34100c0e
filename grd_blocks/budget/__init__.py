"""Nested time budgets (deadline engine) and human durations.

Invariant: a budget's effective deadline is min(own, parent's effective) unless shielded; deadlines are
absolute seconds on an injected monotonic clock; ``math.inf`` means none.
See ``budget.py`` for the full contract; ``stop_file.py`` for how a command says it stopped for its budget.
"""

from grd_blocks.budget.budget import Budget
from grd_blocks.budget.clock import Clock, FakeClock, default_clock
from grd_blocks.budget.durations import UNITS, format_duration, parse_duration
from grd_blocks.budget.stop_file import TIMEOUT_FILE_ENV, budget_stop_marked, mark_budget_stop

__all__ = [
    "TIMEOUT_FILE_ENV",
    "UNITS",
    "Budget",
    "Clock",
    "FakeClock",
    "budget_stop_marked",
    "default_clock",
    "format_duration",
    "mark_budget_stop",
    "parse_duration",
]
