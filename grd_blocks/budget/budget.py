"""Nested time budgets with trio cancel-scope semantics.

Invariants:

- Deadlines are absolute seconds on the budget's injected monotonic clock; ``math.inf`` means no deadline.
  Relative seconds exist only at the edges: ``Budget.after(s)`` is ``Budget.at(clock() + s)``.
- A budget's effective deadline is ``min(own deadline, parent's effective deadline)`` unless it is shielded;
  a shielded budget ignores its ancestors' deadlines and cancellation (cleanup runs under one). Deadlines
  never change after creation, so the effective deadline is computed once.
- ``remaining()`` is ``max(0, effective_deadline - clock())``: it never grows while the clock is monotonic.
- ``cancel()`` is idempotent and may be called from any thread; it cancels this budget and, through the
  ``cancelled`` lookup, every unshielded descendant (existing or created later). Cancellation never changes a
  deadline: ``remaining()`` is time, ``expired()`` is "time is up or cancelled".
- ``binding()`` is the budget whose own deadline is the effective one: self unless an ancestor's deadline is
  strictly earlier (ties bind the nearest level). ``inherited()`` is ``binding() is not self``.
- A budget pickles as a root budget with the same effective deadline, clock, start and cancellation at that
  moment (a plan entry handed to another process); later cancels stay in the process that made it.
"""

from __future__ import annotations

import math
import threading
from numbers import Real
from typing import Any

from grd_blocks.budget.clock import Clock, default_clock
from grd_blocks.errors import BudgetError

__all__ = ["Budget", "CancelFlag"]


def _check_seconds(seconds: object, what: str) -> float:
    """``seconds`` as a float in [0, inf]; ``None`` is inf (no limit). Anything else is a ``BudgetError``."""
    if seconds is None:
        return math.inf
    if isinstance(seconds, bool) or not isinstance(seconds, Real):
        raise BudgetError(
            f"{what} {seconds!r} is not a number of seconds; "
            "pass seconds as an int or float, or None for no limit"
        )
    value = float(seconds)
    if math.isnan(value):
        raise BudgetError(f"{what} {seconds!r} is NaN; pass seconds >= 0, or None for no limit")
    if value < 0:
        raise BudgetError(
            f"{what} {seconds!r} is negative; a budget cannot end before it starts: pass seconds >= 0, "
            "or None for no limit"
        )
    return value


class Budget:
    """A deadline in its parent's; thread-safe. Make one with ``at``, ``after``, ``unlimited``, ``child``."""

    __slots__ = (
        "_cancel_reason",
        "_cancelled",
        "_lock",
        "clock",
        "configured_s",
        "effective_deadline",
        "level",
        "name",
        "own_deadline",
        "parent",
        "shield",
        "started_at",
    )

    def __init__(
        self,
        own_deadline: float,
        *,
        name: str,
        level: str,
        parent: Budget | None,
        clock: Clock,
        shield: bool,
        started_at: float,
        configured_s: float | None,
    ) -> None:
        # Use the classmethods: they validate. This only assigns.
        self.name = name
        self.level = level
        self.parent = parent
        self.clock = clock
        self.shield = shield
        self.started_at = started_at
        self.configured_s = configured_s
        self.own_deadline = own_deadline
        if parent is None or shield:
            self.effective_deadline = own_deadline
        else:
            self.effective_deadline = min(own_deadline, parent.effective_deadline)
        self._lock = threading.Lock()
        self._cancelled = False
        self._cancel_reason = ""

    # --- construction ------------------------------------------------------------------------------------

    @classmethod
    def at(
        cls,
        deadline: float,
        *,
        name: str = "",
        level: str = "",
        parent: Budget | None = None,
        clock: Clock | None = None,
        shield: bool = False,
    ) -> Budget:
        """A budget ending at the absolute monotonic time ``deadline`` (``math.inf``: none), starting now.

        ``clock`` defaults to the parent's clock, else ``time.monotonic``.
        """
        if isinstance(deadline, bool) or not isinstance(deadline, Real) or math.isnan(float(deadline)):
            raise BudgetError(
                f"deadline {deadline!r} for budget {name!r} is not an absolute time; pass clock() + seconds, "
                "or math.inf for no deadline"
            )
        return cls._starting_now(float(deadline), None, name=name, level=level, parent=parent, clock=clock,
                                 shield=shield)

    @classmethod
    def _starting_now(
        cls,
        deadline: float | None,
        seconds: float | None,
        *,
        name: str,
        level: str,
        parent: Budget | None,
        clock: Clock | None,
        shield: bool,
    ) -> Budget:
        """A budget starting now, ending at ``deadline`` or, when that is None, ``seconds`` from now."""
        clock = clock if clock is not None else (parent.clock if parent is not None else default_clock)
        started_at = clock()
        if deadline is None:
            assert seconds is not None
            deadline = started_at + seconds
        else:
            seconds = None if math.isinf(deadline) else max(0.0, deadline - started_at)
        return cls(
            deadline,
            name=name,
            level=level,
            parent=parent,
            clock=clock,
            shield=shield,
            started_at=started_at,
            configured_s=None if seconds is None or math.isinf(seconds) else seconds,
        )

    @classmethod
    def after(
        cls,
        seconds: float | None,
        *,
        name: str = "",
        level: str = "",
        parent: Budget | None = None,
        clock: Clock | None = None,
        shield: bool = False,
    ) -> Budget:
        """A budget of ``seconds`` from now (None or inf: no limit); ``BudgetError`` if < 0 or NaN."""
        value = _check_seconds(seconds, f"timeout of budget {name!r}" if name else "timeout")
        return cls._starting_now(None, value, name=name, level=level, parent=parent, clock=clock,
                                 shield=shield)

    @classmethod
    def unlimited(cls, *, name: str = "", level: str = "", clock: Clock | None = None) -> Budget:
        """A root budget with no deadline (it can still be cancelled)."""
        return cls.at(math.inf, name=name, level=level, clock=clock)

    def child(self, seconds: float | None, *, name: str, level: str, shield: bool = False) -> Budget:
        """A budget of ``seconds`` starting now, nested in this one (on this budget's clock)."""
        return Budget.after(seconds, name=name, level=level, parent=self, clock=self.clock, shield=shield)

    # --- time --------------------------------------------------------------------------------------------

    def remaining(self) -> float:
        """Seconds left before the effective deadline: ``max(0, effective - clock())``; inf when none."""
        if math.isinf(self.effective_deadline):
            return math.inf
        return max(0.0, self.effective_deadline - self.clock())

    def elapsed(self) -> float:
        """Seconds since this budget started."""
        return max(0.0, self.clock() - self.started_at)

    def expired(self) -> bool:
        """True once the effective deadline has passed or the budget is cancelled."""
        return self.cancelled or self.remaining() <= 0.0

    def binding(self) -> Budget:
        """The budget in the chain whose own deadline is the effective one (nearest level on ties)."""
        node = self
        while (
            node.parent is not None and not node.shield and node.parent.effective_deadline < node.own_deadline
        ):
            node = node.parent
        return node

    def inherited(self) -> bool:
        """True when an ancestor's deadline is strictly earlier than this budget's own."""
        return self.binding() is not self

    # --- cancellation ------------------------------------------------------------------------------------

    def cancel(self, reason: str = "") -> None:
        """Cancel this budget and its unshielded descendants. Idempotent: the first reason is kept."""
        with self._lock:
            if not self._cancelled:
                self._cancelled = True
                self._cancel_reason = reason

    def cancel_origin(self) -> Budget | None:
        """The nearest budget whose ``cancel()`` reaches this one (itself or an unshielded ancestor)."""
        node: Budget | None = self
        while node is not None:
            with node._lock:
                if node._cancelled:
                    return node
            if node.shield:
                return None
            node = node.parent
        return None

    def cancel_flag(self) -> CancelFlag:
        """This budget's cancellation as a flag to poll (``is_set()``): what the process runner watches."""
        return CancelFlag(self)

    @property
    def cancelled(self) -> bool:
        """True when this budget or an ancestor it is not shielded from was cancelled."""
        return self.cancel_origin() is not None

    @property
    def cancel_reason(self) -> str:
        """The reason given to the ``cancel()`` that reached this budget ("" when none or not cancelled)."""
        origin = self.cancel_origin()
        return origin._cancel_reason if origin is not None else ""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        origin = self.cancel_origin()
        cancelled = None if origin is None else origin._cancel_reason
        return _detached, (self.effective_deadline, self.name, self.level, self.clock, self.started_at,
                           self.configured_s, cancelled)

    def __repr__(self) -> str:
        own = "inf" if math.isinf(self.own_deadline) else f"{self.own_deadline:.3f}"
        eff = "inf" if math.isinf(self.effective_deadline) else f"{self.effective_deadline:.3f}"
        flags = "".join([", shield" if self.shield else "", ", cancelled" if self.cancelled else ""])
        return f"Budget({self.level or '-'} {self.name!r}, own={own}, effective={eff}{flags})"


def _detached(deadline: float, name: str, level: str, clock: Clock, started_at: float,
              configured_s: float | None, cancelled: str | None) -> Budget:
    """A pickled budget, restored as a root budget (module docstring)."""
    budget = Budget(deadline, name=name, level=level, parent=None, clock=clock, shield=False,
                    started_at=started_at, configured_s=configured_s)
    if cancelled is not None:
        budget.cancel(cancelled)
    return budget


class CancelFlag:
    """A budget's cancellation seen as a flag: ``is_set()`` once it or an unshielded ancestor is cancelled."""

    __slots__ = ("_budget",)

    def __init__(self, budget: Budget) -> None:
        self._budget = budget

    def is_set(self) -> bool:
        return self._budget.cancelled
