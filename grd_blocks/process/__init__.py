"""Run a command as a contained process tree: a deadline or cancel stops all of it, and its output is kept.

``run_command`` is the one entry point; ``CommandOutcome`` is what it returns. See ``runner`` for the
contract, ``keepers`` and ``supervisor`` for the containment (a keeper process per command, a guardian per grd
process), ``ladder`` for SIGTERM -> grace -> SIGKILL.
"""

from __future__ import annotations

from grd_blocks.process.keepers import guard_process, prepare_guardian
from grd_blocks.process.outcome import CommandOutcome
from grd_blocks.process.runner import DeadlineWarning, run_command

__all__ = ["CommandOutcome", "DeadlineWarning", "guard_process", "prepare_guardian", "run_command"]
