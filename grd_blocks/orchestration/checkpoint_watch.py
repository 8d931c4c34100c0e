"""Whether a command's attempt committed a checkpoint, read from the store, never from the command's word.

Invariant: an attempt *committed* only when its prefix (``{store}/{run_key}/commands/{phase}.{command}``)
holds, after it ended, a committed checkpoint newer than the newest it held when the attempt started; both are
read through the store's LATEST.json (with its fallback scan), so the command's output and exit code play no
part. A TIMEOUT attempt that committed nothing, of a command that uses its checkpoints (its prefix holds one,
or some attempt opened it under grd: ``RunCheckpoints.from_env`` or ``from_url`` of ``$GRD_CHECKPOINT_URL``
leave a ``.opened`` marker there), is *stalled*: one WARNING line in the run's log, and the same text in its
row's note, name the command, its budget, how long it ran, when its first checkpoint came before (the last
attempt that committed one: its time to first save; or that it never saved) and the fix (raise that budget's
timeout, or save earlier); ``stalled_attempts`` counts consecutive stalled attempts, carried from the previous
attempt's row in the run's progress, so a retry loop that never gets past start-up reads "no progress in N
attempts". A command grd has never seen open its checkpoints (a plain shell command) is just a timeout: no
line, nothing counted; so is a first attempt stopped before it opened them (the marker is there from the first
attempt that did). A store that cannot be read leaves the row as it was (never a failure of the command).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from grd_blocks.checkpoint.refs import CheckpointRef
from grd_blocks.errors import GrdError
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CheckpointProgress, CommandReport

__all__ = ["CheckpointPrefix", "CommandPrefixes", "Watch", "judge", "watch"]

logger = logging.getLogger("grd.checkpoint")


class CheckpointPrefix(Protocol):
    """The part of ``RunCheckpoints`` the watch reads: one command's prefix."""

    url: str

    def latest(self) -> CheckpointRef | None: ...
    def first_after(self, ref: CheckpointRef | None) -> CheckpointRef | None: ...
    def was_opened(self) -> bool: ...


CommandPrefixes = Callable[[str], CheckpointPrefix]
"""``phase.command`` -> that command's checkpoint prefix in the run's store (the edge builds it)."""

_BUDGETS = {"command": "its timeout", "benchmark": "the benchmark's timeout", "cleanup": "its timeout"}


@dataclass(frozen=True)
class Watch:
    """A command's prefix as it was when its attempt started (``before``: its newest checkpoint, or None)."""

    prefix: CheckpointPrefix
    before: CheckpointRef | None
    started_unix: float


def watch(prefixes: CommandPrefixes, label: str) -> Watch | None:
    """Read ``label``'s newest checkpoint before its attempt starts; None when the store cannot be read."""
    started = time.time()
    try:
        prefix = prefixes(label)
        return Watch(prefix, prefix.latest(), started)
    except (GrdError, OSError) as exc:
        logger.debug("could not read the checkpoints of %s before it started: %s", label, exc)
        return None


def _unix(created_at: str) -> float | None:
    try:
        return datetime.fromisoformat(created_at).timestamp()
    except ValueError:
        return None


def _first_commit(seen: Watch, attempt: int) -> tuple[float | None, int | None]:
    first = seen.prefix.first_after(seen.before)
    at = None if first is None else _unix(first.created_at)
    if at is None:
        return None, None
    return round(max(0.0, at - seen.started_unix), 3), attempt


def judge(seen: Watch, row: CommandReport, previous: CommandReport | None, *, phase: str
          ) -> tuple[CommandReport, str | None]:
    """``row`` with its ``checkpoints`` block, and the WARNING line of a stalled attempt (None otherwise)."""
    label = f"{phase}.{row.name}"
    try:
        after = seen.prefix.latest()
        committed = after is not None and (seen.before is None or after.order > seen.before.order)
        first = _first_commit(seen, row.attempts) if committed else (None, None)
        checkpoints_used = after is not None or seen.prefix.was_opened()
    except (GrdError, OSError) as exc:
        logger.debug("could not read the checkpoints of %s after it ended: %s", label, exc)
        return row, None
    carried = previous.checkpoints if previous is not None else None
    if not committed and carried is not None:
        first = carried.first_commit_s, carried.first_commit_attempt
    stalled = 0
    if not committed and row.status is Status.TIMEOUT and checkpoints_used:
        stalled = 1 + (carried.stalled_attempts if carried is not None else 0)
    progress = CheckpointProgress(committed=committed, latest=None if after is None else after.name,
                                  first_commit_s=first[0], first_commit_attempt=first[1],
                                  stalled_attempts=stalled)
    line = _stalled_line(seen, row, progress, phase=phase) if stalled else None
    note = row.note if line is None else (line if row.note is None else f"{row.note}; {line}")
    return row.model_copy(update={"checkpoints": progress, "note": note}), line


def _stalled_line(seen: Watch, row: CommandReport, progress: CheckpointProgress, *, phase: str) -> str:
    """``phase.cmd: stopped by ...; <when its first checkpoint came>; <no progress in N attempts>: <fix>``."""
    stop = row.timeout
    level = stop.level if stop is not None else "command"
    granted = "" if stop is None or stop.effective_s is None else f", granted {stop.effective_s:.1f}s"
    head = (f"{phase}.{row.name}: stopped by its budget ({level} deadline{granted}) after "
            f"{row.elapsed_s:.1f}s with no new checkpoint in {seen.prefix.url}")
    if progress.first_commit_s is not None:
        when = (f"attempt {progress.first_commit_attempt}'s first checkpoint came "
                f"{progress.first_commit_s:.1f}s after its start")
    elif progress.latest is not None:
        when = f"its newest checkpoint, {progress.latest}, is from before this attempt"
    else:
        when = "it never saved one there"
    loop = (f"no progress in {progress.stalled_attempts} attempts" if progress.stalled_attempts > 1
            else "this attempt made no progress")
    budget = _BUDGETS.get(level, f"phase {phase}'s timeout")
    return (f"{head}; {when}; {loop}: raise {budget} above the time to its first checkpoint, or save earlier "
            "(a first save right after start-up, or a shorter save_every_steps)")
