"""What happened to one command: how it ended, when grd signalled it, and what it printed last.

Invariant: ``timed_out`` and ``cancelled`` are never both True; ``survivors`` is the number of the command's
processes still running after the kill ladder (0 unless one is stuck in the kernel); a command that never
started has ``returncode`` ``None`` (its deadline had passed or it was cancelled) or 127/126 with
``spawn_error`` set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["CommandOutcome"]


@dataclass(frozen=True)
class CommandOutcome:
    """The result of ``run_command``; times are seconds on the caller's clock, relative to the start."""

    returncode: int | None  # exit status; -N = killed by signal N; None = never started
    timed_out: bool  # the deadline passed before the command exited
    cancelled: bool  # the cancel event was set before the command exited
    elapsed_s: float  # start to the end of output capture
    term_sent_s: float | None  # when SIGTERM went to the tree (deadline, cancel, or leftovers after exit)
    kill_sent_s: float | None  # when SIGKILL went to the tree
    survivors: int  # processes of the tree still running after SIGKILL (must be 0)
    stdout_tail: str  # the last ``tail_chars`` characters of stdout
    stderr_tail: str  # the last ``tail_chars`` characters of stderr
    log_path: str | None  # where the whole output was written
    containment: str  # "namespace" | "cgroup" | "subreaper" | "none" (never started)
    spawn_error: str | None  # why the command could not start, naming the executable or cwd and the fix
    leftover: int = 0  # processes still running when the main process exited by itself (grd stopped them)
    pid: int | None = None  # the main process id on the host (also its process group and session id)
    warn_sent_s: float | None = None  # when the pre-deadline warning signal went to the tree
    note: str | None = None  # something the caller should report (e.g. an earlier copy was stopped first)
    stopped_by: str | None = None  # who ran the deadline's ladder: "grd", or "keeper" (grd missed it)

    def with_note(self, note: str) -> CommandOutcome:
        """A copy carrying ``note`` (appended to any note it has)."""
        return replace(self, note=note if self.note is None else f"{self.note}; {note}")
