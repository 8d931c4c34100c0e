"""Opt-in timestamps of the stages of a `grd run` attempt, for ``bench/bench_attempt_cost.py``.

Invariant: with ``GRD_TIMELINE`` unset (read once, at import) ``mark()`` does nothing but test one constant;
with ``GRD_TIMELINE=FILE`` each call appends one line ``NAME SECONDS`` to FILE, SECONDS being the host's
``CLOCK_MONOTONIC`` (``time.monotonic()``: one clock for every process of the host, so the benchmark can
subtract the time it started the process). Nothing here imports anything but the standard library.
"""

from __future__ import annotations

import os
import time

__all__ = ["TIMELINE_ENV", "mark"]

TIMELINE_ENV = "GRD_TIMELINE"
_PATH = os.environ.get(TIMELINE_ENV) or None


def mark(name: str) -> None:
    """Append ``name`` and the monotonic time to ``$GRD_TIMELINE`` (nothing when it is unset)."""
    if _PATH is None:
        return
    line = f"{name} {time.monotonic():.6f}\n".encode()
    fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
