"""The one error hierarchy of grd.

Invariant: every error grd raises on purpose is a ``GrdError``; each message names the input that was wrong,
the rule it broke and how to fix it, and is built from structured fields so callers can inspect them.
Subclasses also derive from the built-in exception that fits (``ValueError``, ``FileNotFoundError``,
``OSError``), so code that catches built-ins keeps working.
"""

from __future__ import annotations

from pathlib import Path


class GrdError(Exception):
    """Root of every error grd raises on purpose."""


# --- specs, durations and usage -------------------------------------------------------------------------


class SpecError(GrdError, ValueError):
    """A benchmark spec is invalid: names the file, the line, the key, the problem and the fix."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        key: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.fix = fix
        where = self.file or "<spec>"
        if line is not None:
            where = f"{where}:{line}"
        parts = [where]
        if key:
            parts.append(f"key '{key}'")
        message = ": ".join(parts) + f": {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)


class DurationError(GrdError, ValueError):
    """A duration (``90s``, ``5m``, ``1h30m`` or seconds) could not be parsed or is out of range."""

    def __init__(self, value: object, rule: str, *, field: str | None = None) -> None:
        self.value = value
        self.rule = rule
        self.field = field  # the parameter or key it was given as, where the caller knows it
        where = f"{field}: " if field else ""
        super().__init__(
            f"{where}duration {value!r} is invalid: {rule}; "
            "write seconds as a number (90, 1.5) or a string like '90s', '5m', '1h30m', or null for no limit"
        )


class UsageError(GrdError, ValueError):
    """A command-line argument or API parameter is invalid."""


class PreflightError(UsageError):
    """A `grd run` flag cannot work (found before the first command runs): names the flag, its value, what is
    wrong and the fix (``fix`` may be empty when ``problem`` already ends with one), on one line."""

    def __init__(self, flag: str, value: object, problem: str, fix: str) -> None:
        self.flag = flag
        self.value = value
        self.problem = " ".join(problem.split())  # one line, whatever the underlying error printed
        self.fix = fix
        super().__init__(f"{flag} {value!r}: {self.problem}" + (f"; {fix}" if fix else ""))


# --- budgets and processes ------------------------------------------------------------------------------


class BudgetError(GrdError, ValueError):
    """A budget was asked for something its rules forbid (negative timeout, NaN, ...)."""


class ProcessError(GrdError, OSError):
    """A command could not be started or contained (executable missing, cwd missing, ...)."""


class DispatchError(GrdError, OSError):
    """A command could not be handed to the cluster that should run it (its Dask scheduler is unreachable)."""


# --- checkpoints ----------------------------------------------------------------------------------------


class CheckpointError(GrdError):
    """Root of every checkpoint store error."""


class InvalidRunKey(CheckpointError, ValueError):
    """A run key is outside ``[A-Za-z0-9_.-]{1,128}`` (or is ``.``/``..``)."""

    def __init__(self, run_key: object) -> None:
        self.run_key = run_key
        super().__init__(
            f"run key {run_key!r} is invalid: run keys are 1-128 characters of [A-Za-z0-9_.-] "
            "and not '.' or '..'; use e.g. 'nightly-2026-11-23' without '/' or spaces"
        )


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No committed checkpoint matches what was asked for."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint's files do not match its manifest (truncated, flipped bits, missing, garbage)."""


class CheckpointTooNew(CheckpointError):
    """A manifest or LATEST.json is of a format this grd does not read: a newer grd wrote it. Not damage, so a
    reader never skips it for an older checkpoint; the message names the format, the grd that wrote it and
    the upgrade that reads it."""

    def __init__(self, what: str, path: str, found: int, reads: tuple[int, ...], this_grd: str,
                 writer_grd: str | None) -> None:
        self.what, self.path, self.found, self.reads = what, path, found, reads
        self.this_grd, self.writer_grd = this_grd, writer_grd
        known = f"{reads[0]}-{reads[-1]}" if len(reads) > 1 else str(reads[0])
        if writer_grd:
            wrote, fix = f"grd {writer_grd} wrote it", f"pip install -U 'grd>={writer_grd}'"
        else:
            wrote, fix = "a grd newer than this one wrote it", "pip install -U grd"
        super().__init__(
            f"{what} {path} is format {found} and {wrote}; this grd ({this_grd}) reads {what} formats "
            f"{known} only. Upgrade grd to read it ({fix}); grd does not fall back to an older checkpoint "
            "meanwhile, so no finished work is skipped"
        )


class UnsafeCheckpoint(CheckpointError):
    """A payload would execute code when loaded (a pickle outside torch's weights-only set)."""


class StoreUnavailable(CheckpointError, OSError):
    """The storage backend failed (disk full, unreachable server, bad credentials); nothing committed lost."""


class StaleWriter(CheckpointError):
    """An older writer tried to move LATEST.json backwards; the newer checkpoint stays the latest."""


class ConfigError(GrdError, ValueError):
    """A block or library object was configured with invalid fields."""


class BenchmarkIncomplete(GrdError):
    """A benchmark attempt ended with failed or timed-out commands; its flow has retries left (it resumes)."""


class TrainingInterrupted(GrdError):
    """A training attempt stopped early on purpose after committing a checkpoint; a retry resumes from it.

    ``reason`` is ``"preempted"`` (SIGTERM), ``"cancelled"`` (SIGINT), ``"deadline"`` or ``"stop_at_step"``;
    ``exit_code`` is what a standalone script should exit with (143, 130, 124, 75).
    """

    EXIT_CODES = {"preempted": 143, "cancelled": 130, "deadline": 124, "stop_at_step": 75}

    def __init__(
        self, reason: str, *, global_step: int, checkpoint_url: str | None, detail: str = ""
    ) -> None:
        self.reason = reason
        self.global_step = global_step
        self.checkpoint_url = checkpoint_url
        self.detail = detail
        self.exit_code = self.EXIT_CODES.get(reason, 1)
        where = checkpoint_url or "no checkpoint store"
        message = f"training stopped ({reason}) after global step {global_step}; state saved to {where}"
        if detail:
            message += f" ({detail})"
        super().__init__(
            message + "; run again with the same run key (or retry the flow run) to resume there"
        )

    def plain(self) -> TrainingInterrupted:
        """The same stop as a plain ``TrainingInterrupted`` (same message), for a caller that must not let it
        pass for a ``TimeoutError`` (Prefect logs a timeout's repr and makes it the state's message)."""
        return TrainingInterrupted(self.reason, global_step=self.global_step,
                                   checkpoint_url=self.checkpoint_url, detail=self.detail)


class TrainingTimedOut(TrainingInterrupted, TimeoutError):
    """A training attempt saved and stopped before its deadline (exit code 124); the retry continues."""


class ApprovalRejected(GrdError):
    """A long run was refused at its approval step; the decision holds for the run key and its retries."""

    def __init__(self, run_key: str, *, who: str, reason: str) -> None:
        self.run_key = run_key
        self.who = who
        self.reason = reason
        approver = who or "an unnamed approver"
        super().__init__(
            f"run {run_key!r} was not approved by {approver}: {reason or 'no reason given'}; "
            "the decision holds for this run key, so start a new run key (or lower the estimate to fit the "
            "default budget) to ask again"
        )


class ApprovalExpired(GrdError, TimeoutError):
    """Nobody answered a long run's approval request in time; a retry of the flow run asks again."""
