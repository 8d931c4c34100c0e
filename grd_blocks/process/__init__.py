"""Run a command as a contained process tree: a deadline or cancel stops all of it, and its output is kept.

``run_command`` is the one entry point; ``CommandOutcome`` is what it returns. See ``runner`` for the
contract, ``cgroup`` and ``sweep`` for the two containments, ``ladder`` for SIGTERM -> grace -> SIGKILL.
"""

from __future__ import annotations

from grd_blocks.process.outcome import CommandOutcome
from grd_blocks.process.runner import run_command

__all__ = ["CommandOutcome", "run_command"]
