"""Deadline-aware checkpointing: stop (after saving) while there is still time to save.

Invariant: at a step boundary the pacer says "stop now" when the time left is less than ``safety * (one more
step + one save) + exit_s + margin_s``, where ``exit_s`` is the time the process needs to leave after its save
(``leaving.exit_now`` keeps that short; 0 unless the training is a command grd runs, see
``_exit_s_from_env``); step and save times are estimated as the larger of an exponential moving average and
the maximum of the last ``window`` observations (a slow outlier is believed at once, a fast one only slowly),
and the save estimate starts at ``initial_save_s`` until a save was measured. The deadline is absolute
monotonic seconds (``math.inf`` = none); it comes from an explicit deadline, a ``Budget`` (its effective
deadline, so a parent's deadline counts too) or grd's ``GRD_DEADLINE_UNIX`` (else ``GRD_TIME_LEFT_S``).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping

from grd_blocks.budget import Budget
from grd_blocks.errors import ConfigError


class DurationEstimate:
    """EMA and max of the last ``window`` samples; ``value`` is the larger (``prior`` before any sample)."""

    def __init__(self, *, prior: float = 0.0, alpha: float = 0.3, window: int = 5) -> None:
        self.prior = prior
        self.alpha = alpha
        self.ema: float | None = None
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.ema = seconds if self.ema is None else self.alpha * seconds + (1 - self.alpha) * self.ema
        self.recent.append(seconds)

    @property
    def value(self) -> float:
        if self.ema is None:
            return self.prior
        return max(self.ema, max(self.recent))

    @property
    def samples(self) -> int:
        return len(self.recent)


class Pacer:
    """Decides at each step boundary whether to save and stop before ``deadline``."""

    def __init__(
        self,
        deadline: float = math.inf,
        *,
        budget: Budget | None = None,
        initial_save_s: float = 1.0,
        safety: float = 1.5,
        margin_s: float = 0.05,
        exit_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deadline = deadline
        self.exit_s = exit_s if exit_s is not None else _exit_s_from_env()
        self.budget = budget
        self.clock = budget.clock if budget is not None else clock
        self.safety = safety
        self.margin_s = margin_s
        self.step = DurationEstimate()
        self.save = DurationEstimate(prior=initial_save_s)

    @classmethod
    def from_sources(
        cls,
        *,
        deadline: float | None = None,
        time_left_s: float | None = None,
        budget: Budget | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        initial_save_s: float = 1.0,
    ) -> Pacer:
        """Earliest of ``deadline`` (absolute), now + ``time_left_s``, ``budget``, and grd's deadline:
        ``$GRD_DEADLINE_UNIX`` (fixed when grd started the process, so start-up time counts), else now +
        ``$GRD_TIME_LEFT_S``."""
        env = os.environ if environ is None else environ
        now = clock()
        candidates = [math.inf if deadline is None else deadline]
        if time_left_s is not None:
            candidates.append(now + time_left_s)
        absolute = env.get("GRD_DEADLINE_UNIX")
        if absolute and absolute != "inf":
            # The deadline grd fixed when it started the process: interpreter and torch start-up count.
            try:
                candidates.append(now + float(absolute) - time.time())
            except ValueError:
                raise ConfigError(
                    f"GRD_DEADLINE_UNIX={absolute!r} is not a number of seconds since the epoch; unset it"
                ) from None
        raw = env.get("GRD_TIME_LEFT_S")
        if raw and not absolute:
            try:
                candidates.append(now + float(raw))
            except ValueError:
                raise ConfigError(
                    f"GRD_TIME_LEFT_S={raw!r} is not a number of seconds; set it to e.g. 600 or unset it"
                ) from None
        return cls(min(candidates), budget=budget, clock=clock, initial_save_s=initial_save_s)

    def remaining(self) -> float:
        """Seconds left before the earliest deadline (inf when there is none)."""
        left = self.deadline - self.clock()
        if self.budget is not None:
            left = min(left, self.budget.remaining())
        return max(0.0, left)

    @property
    def limited(self) -> bool:
        return math.isfinite(self.deadline) or (
            self.budget is not None and math.isfinite(self.budget.remaining())
        )

    def needed_s(self) -> float:
        """Time one more step, the save after it and the exit take, with the safety factor and margin."""
        return self.safety * (self.step.value + self.save.value) + self.exit_s + self.margin_s

    def should_stop(self) -> bool:
        """True when another step might leave no time to save before the deadline."""
        if self.budget is not None and self.budget.cancelled:
            return True
        if not self.limited:
            return False
        return self.remaining() < self.needed_s()

    def describe(self) -> str:
        return (
            f"{self.remaining():.2f}s left, one step ~{self.step.value:.3f}s, one save "
            f"~{self.save.value:.3f}s (x{self.safety}), exit {self.exit_s:.2f}s + {self.margin_s}s"
        )


DEFAULT_EXIT_S = 0.5  # leaving through exit_now (atexit callbacks, flushing); see bench/results/


def _exit_s_from_env() -> float:
    """``GRD_EXIT_S`` if set; else ``DEFAULT_EXIT_S`` for a command grd runs (``GRD_RUN_KEY`` set: leaving
    the process is part of its budget), 0 for training inside a longer-lived process (a Prefect flow)."""
    raw = os.environ.get("GRD_EXIT_S")
    if not raw:
        return DEFAULT_EXIT_S if os.environ.get("GRD_RUN_KEY") else 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"GRD_EXIT_S={raw!r} is not a number of seconds; set it to e.g. 0.5 or unset it"
        ) from None
    if not value >= 0:
        raise ConfigError(f"GRD_EXIT_S={raw!r} must be >= 0")
    return value
