"""The report of a benchmark run: its JSON shape (docs/design.md, `grd run`) and its readable renderings.

Invariant: every report serialises to the same keys whether or not a node timed out (``timeout`` is ``null``
unless the command timed out); statuses are the strings of ``Status``; durations are seconds rounded to ms.
A row read back from a progress checkpoint (``CommandReport.model_validate``) equals the row that was written.
"""

from __future__ import annotations

import json
import os
import signal
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TextIO, overload

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, PrivateAttr, SerializationInfo
from pydantic_core import CoreSchema, core_schema

from grd_blocks.checkpoint.payload.serialization import JsonText
from grd_blocks.orchestration.status import EXIT_TIMEOUT, Status, exit_code
from grd_blocks.row_texts import RowTexts

__all__ = [
    "BenchmarkReport",
    "CheckpointProgress",
    "CommandReport",
    "CommandRows",
    "PhaseReport",
    "ProgressInfo",
    "TimeoutInfo",
    "ended_with",
    "last_written",
    "render_summary",
    "table_left_out",
    "table_rows",
    "write_report",
]

_MARK = {
    Status.COMPLETED: "✅ COMPLETED",
    Status.FAILED: "❌ FAILED",
    Status.TIMEOUT: "⏱ TIMEOUT",
    Status.CANCELLED: "🚫 CANCELLED",
    Status.SKIPPED: "⏭ SKIPPED",
}


class _Model(BaseModel):
    # rows are read back from their JSON text (CommandRows): pydantic's cache of the strings it reads would
    # otherwise keep up to 16,384 of their values (names, paths, output tails) alive for the process's life
    model_config = ConfigDict(extra="ignore", cache_strings="keys")


class TimeoutInfo(_Model):
    """How a command that timed out was stopped."""

    level: str = Field(description="Level of the budget whose deadline stopped it (command, phase, ...).")
    configured_s: float | None = Field(description="The command's own timeout; null if it had none.")
    effective_s: float | None = Field(description="Seconds granted at start (min over its chain).")
    inherited: bool = Field(description="True when an enclosing budget's deadline, not its own, stopped it.")
    term_sent_s: float | None = Field(description="Seconds after start when SIGTERM went to the tree.")
    kill_sent_s: float | None = Field(description="When SIGKILL went; null if SIGTERM sufficed.")
    survivors: int = Field(description="Processes a /proc scan found alive after SIGKILL (0: none escaped).")
    warn_sent_s: float | None = Field(
        default=None, description="Seconds after start when the pre-deadline warning signal went to the tree."
    )
    stopped_by: str | None = Field(
        default=None,
        description="Who ran the kill ladder: grd, or its keeper when grd missed the deadline (stopped by "
        "SIGSTOP or Ctrl-Z, hung or starved); null when the command stopped itself (exit 124).",
    )
    launcher_returncode: int | None = Field(
        default=None,
        description="The code the command really exited with when a process of it marked a budget stop "
        "(GRD_TIMEOUT_FILE) and a launcher such as torchrun turned that into another code (the row says "
        "124); null otherwise.",
    )


class CheckpointProgress(_Model):
    """What an attempt that did not complete committed to its checkpoint prefix, read from the store (never
    from the command's word): ``{store}/{run_key}/commands/{phase}.{command}`` before and after it ran."""

    committed: bool = Field(
        description="A checkpoint newer than the prefix's newest at the attempt's start was committed."
    )
    latest: str | None = Field(
        default=None, description="The prefix's newest committed checkpoint at the attempt's end; null: none."
    )
    first_commit_s: float | None = Field(
        default=None,
        description="Seconds from the start of the last attempt that committed one (this one, or an earlier "
        "one's carried on) to its oldest new checkpoint still in the store; null: unknown.",
    )
    first_commit_attempt: int | None = Field(
        default=None, description="The attempt ``first_commit_s`` was measured in; null: unknown."
    )
    stalled_attempts: int = Field(
        default=0,
        description="Consecutive attempts up to this one stopped by their budget with no new checkpoint "
        "(0: this one committed or did not time out).",
    )


class CommandReport(_Model):
    """One command (or cleanup command) of a phase."""

    name: str
    status: Status
    returncode: int | None = None
    elapsed_s: float = 0.0
    attempts: int = 0
    stdout_tail: str = ""
    stderr_tail: str = ""
    timeout: TimeoutInfo | None = None
    budget_s: float | None = Field(default=None, description="Seconds granted at start; null = no limit.")
    resumed: bool = Field(default=False, description="Completed by an earlier attempt; not re-run.")
    reason: str | None = Field(default=None, description="Why it was skipped, cancelled or could not start.")
    log_path: str | None = Field(default=None, description="This attempt's whole output, byte for byte.")
    attempt_logs: list[str] = Field(
        default_factory=list, description="The log of every attempt so far, oldest first (this one last)."
    )
    note: str | None = Field(
        default=None, description="Something grd did that the reader should know (an earlier copy stopped)."
    )
    checkpoints: CheckpointProgress | None = Field(
        default=None,
        description="For an attempt with a store and a deadline that did not complete: what it committed.",
    )
    host: str | None = Field(
        default=None, description="The machine that ran it, on a Dask runner (null: the machine running grd)."
    )
    worker: str | None = Field(default=None, description="The Dask worker that ran it (its address).")
    _kept: tuple[RowTexts, int] | None = PrivateAttr(default=None)

    def kept_in(self, store: RowTexts) -> int:
        """The number of this row's JSON text (``model_dump(mode="json")``) in ``store``, added there once:
        the run's progress and its phase report keep the same text. A row is not changed once made
        (``model_copy`` makes a new row, which is kept anew)."""
        kept = self._kept
        if kept is not None and kept[0] is store:
            return kept[1]
        number = store.add(JsonText(self.model_dump(mode="json")).encoded())
        self._kept = (store, number)
        return number

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        copy._kept = None
        return copy

    def __eq__(self, other: object) -> bool:
        """Equal fields (where the row is kept does not count)."""
        return type(other) is type(self) and self.__dict__ == other.__dict__


class CommandRows(Sequence[CommandReport]):
    """A phase's command rows in spec order, each kept as its JSON text in the run's ``RowTexts`` (the text
    its progress commit refers to, compressed with its neighbours) and read back as a ``CommandReport`` when
    asked for.

    Invariant: ``rows[i]`` equals the row that was kept at ``i``. A run of 10,000 short commands keeps some
    50 bytes per row this way, against some 1.3 KB for a model and another 0.5 KB for its progress text. In a
    pydantic model it validates from any sequence of rows (or their dicts) and dumps as a list of them; it
    pickles as the rows' texts."""

    __slots__ = ("_numbers", "_store")

    def __init__(self, rows: Iterable[CommandReport] = (), *, store: RowTexts | None = None) -> None:
        self._store = RowTexts() if store is None else store
        self._numbers = array("I", (row.kept_in(self._store) for row in rows))

    @classmethod
    def kept(cls, store: RowTexts, numbers: Iterable[int]) -> CommandRows:
        """The rows ``store`` keeps as ``numbers``, in that order."""
        rows = cls(store=store)
        rows._numbers = array("I", numbers)
        return rows

    def __len__(self) -> int:
        return len(self._numbers)

    @overload
    def __getitem__(self, index: int) -> CommandReport: ...
    @overload
    def __getitem__(self, index: slice) -> list[CommandReport]: ...

    def __getitem__(self, index: int | slice) -> CommandReport | list[CommandReport]:
        if isinstance(index, slice):
            return [self._read(number) for number in self._numbers[index]]
        return self._read(self._numbers[index])

    def __iter__(self) -> Iterator[CommandReport]:
        return (self._read(number) for number in self._numbers)

    def _read(self, number: int) -> CommandReport:
        row = CommandReport.model_validate_json(self._store.text(number))
        row._kept = (self._store, number)
        return row

    def texts(self) -> list[bytes]:
        """Each row's JSON text, in order."""
        return [self._store.text(number) for number in self._numbers]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CommandRows):
            return self.texts() == other.texts()
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CommandRows({list(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return _rows_of_texts, (self.texts(),)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validated,
            serialization=core_schema.plain_serializer_function_ser_schema(cls._dumped, info_arg=True),
        )

    @classmethod
    def _validated(cls, value: Any) -> CommandRows:
        if isinstance(value, CommandRows):
            return value
        if isinstance(value, (list, tuple)):
            return cls(row if isinstance(row, CommandReport) else CommandReport.model_validate(row)
                       for row in value)
        raise ValueError(f"command rows must be a list of rows, not {type(value).__name__}")

    def _dumped(self, info: SerializationInfo) -> list[Any]:
        mode = "json" if info.mode_is_json() else "python"
        return [row.model_dump(mode=mode) for row in self]  # the model's key order, not the text's sorted one


def _rows_of_texts(texts: list[bytes]) -> CommandRows:
    """The rows of ``texts`` (what a pickled ``CommandRows`` holds)."""
    store = RowTexts()
    return CommandRows.kept(store, [store.add(text) for text in texts])


class PhaseReport(_Model):
    """One phase: its commands in spec order and its cleanup."""

    name: str
    status: Status
    elapsed_s: float = 0.0
    timeout_s: float | None = None
    commands: CommandRows = Field(default_factory=CommandRows)
    cleanup: CommandReport | None = None


class ProgressInfo(_Model):
    """Whether this attempt's command results reached the store (a resume skips only what did)."""

    committed: bool = Field(description="Every finished command's result is in the store.")
    error: str | None = Field(default=None, description="Why not (the last store error); null if committed.")
    note: str | None = Field(default=None, description="E.g. a resume that found nothing to resume.")


class BenchmarkReport(_Model):
    """A whole benchmark run; ``exit_code`` is what `grd run` exits with (130 after Ctrl-C/SIGINT, 143 after
    SIGTERM)."""

    benchmark: str
    status: Status
    run_key: str
    flow_run_id: str | None = None
    elapsed_s: float = 0.0
    exit_code: int = 0
    timeouts: bool = True
    spec: str = ""
    phases: list[PhaseReport] = Field(default_factory=list)
    cleanup: CommandReport | None = None
    progress: ProgressInfo | None = None

    def to_json(self) -> str:
        """The report as indented JSON text."""
        return json.dumps(_json_tree(self), indent=2, ensure_ascii=False) + "\n"

    def write_json(self, out: TextIO) -> None:
        """Write ``to_json()``'s text to ``out`` as it is encoded: one row's data at a time is alive (a whole
        report of 10,000 rows is some 20 MB as dicts and text)."""
        json.dump(_json_tree(self), out, indent=2, ensure_ascii=False)
        out.write("\n")

    def with_status(self, status: Status) -> BenchmarkReport:
        """A copy whose status and exit code are ``status``'s."""
        return self.model_copy(update={"status": status, "exit_code": exit_code(status)})


class _RowsDumpedWhenRead(list):  # type: ignore[type-arg]
    """A list of report models that json's encoder reads as their JSON data, dumping each as it reaches it
    (the encoder with ``indent`` walks lists in Python, through ``len`` and iteration)."""

    def __init__(self, rows: CommandRows) -> None:
        super().__init__()
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return (row.model_dump(mode="json") for row in self._rows)


def _json_tree(report: BenchmarkReport) -> dict[str, Any]:
    """``report.model_dump(mode="json")`` in the same key order, with each phase's command rows dumped only
    when the encoder reaches them."""
    head = report.model_dump(mode="json", exclude={"phases"})
    phases = []
    for phase in report.phases:
        data = phase.model_dump(mode="json", exclude={"commands"})
        data["commands"] = _RowsDumpedWhenRead(phase.commands)
        phases.append({key: data[key] for key in PhaseReport.model_fields})
    head["phases"] = phases
    return {key: head[key] for key in BenchmarkReport.model_fields}


_LAST_WRITTEN: list[Path] = []


def write_report(report: BenchmarkReport, path: str | Path) -> Path:
    """Write ``report`` as JSON to ``path`` atomically (temp file in the same directory, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        report.write_json(out)
    os.replace(tmp, target)
    _LAST_WRITTEN[:] = [target]
    return target


def last_written() -> Path | None:
    """The path this process last wrote a report to (`grd run` names it after an interrupted run)."""
    return _LAST_WRITTEN[0] if _LAST_WRITTEN else None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def ended_with(returncode: int) -> str:
    """``exited 1``, or ``was ended by SIGUSR1`` for a negative (signal) code."""
    if returncode >= 0:
        return f"exited {returncode}"
    try:
        return f"was ended by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was ended by signal {-returncode}"


def _stalled(row: CommandReport) -> str:
    """``; no new checkpoint`` (``in N attempts``) for a timeout that committed none (checkpoint_watch.py)."""
    stalled = row.checkpoints.stalled_attempts if row.checkpoints is not None else 0
    if stalled == 0:
        return ""
    return "; no new checkpoint" + (f" in {stalled} attempts" if stalled > 1 else "")


def _note(row: CommandReport) -> str:
    return _plain_note(row) + _stalled(row)


def _plain_note(row: CommandReport) -> str:
    if row.resumed:
        return "resumed: completed in an earlier attempt"
    if row.timeout is not None:
        t = row.timeout
        whose = f"{t.level} deadline" + (" (inherited)" if t.inherited else "")
        if row.returncode == EXIT_TIMEOUT and t.term_sent_s is None and t.stopped_by is None:
            code = t.launcher_returncode
            said = "" if code is None else f", its launcher {ended_with(code)}"
            return f"{whose}, granted {_seconds(t.effective_s)}; stopped itself{said}"
        ladder = f"TERM at {_seconds(t.term_sent_s)}"
        if t.kill_sent_s is not None:
            ladder += f", KILL at {_seconds(t.kill_sent_s)}"
        if t.survivors:
            ladder += f", {t.survivors} SURVIVED"
        return f"{whose}, granted {_seconds(t.effective_s)}; {ladder}"
    return row.reason or ""


def _rows(report: BenchmarkReport) -> Iterable[tuple[str, str, CommandReport]]:
    for phase in report.phases:
        for row in phase.commands:
            yield phase.name, row.name, row
        if phase.cleanup is not None:
            yield phase.name, f"{phase.cleanup.name} (cleanup)", phase.cleanup
    if report.cleanup is not None:
        yield "-", f"{report.cleanup.name} (cleanup)", report.cleanup


TABLE_ROWS = 1_000
"""The most rows a results table holds: a run of more commands shows every one that did not complete and as
many completed ones as fit (a table of 10,000 rows is no help in the UI, and costs the flow process some 10 MB
to build and send); the report file holds them all."""


def table_rows(report: BenchmarkReport, limit: int | None = None) -> list[dict[str, str]]:
    """Rows for a Prefect table artifact, in the report's order, TIMEOUT rows marked with ⏱: one per command
    (cleanups included) up to ``limit`` (``TABLE_ROWS`` when None); past it, every row not COMPLETED first
    (up to ``limit``), then the first COMPLETED ones until ``limit`` rows are chosen (``table_left_out``
    counts the others)."""
    chosen = _chosen(report, TABLE_ROWS if limit is None else limit)
    return [_table_row(phase, command, row) for number, (phase, command, row) in enumerate(_rows(report))
            if chosen is None or number in chosen]


def table_left_out(report: BenchmarkReport, limit: int | None = None) -> int:
    """How many of the report's rows ``table_rows`` leaves out."""
    return max(0, sum(1 for _ in _rows(report)) - (TABLE_ROWS if limit is None else limit))


def _chosen(report: BenchmarkReport, limit: int) -> frozenset[int] | None:
    """The numbers (in ``_rows`` order) of the rows a table of at most ``limit`` rows shows (None: all)."""
    statuses = [row.status for _, _, row in _rows(report)]
    if len(statuses) <= limit:
        return None
    first = [number for number, status in enumerate(statuses) if status is not Status.COMPLETED][:limit]
    rest = [number for number, status in enumerate(statuses) if status is Status.COMPLETED]
    return frozenset(first + rest[: limit - len(first)])


def _table_row(phase: str, command: str, row: CommandReport) -> dict[str, str]:
    return {
        "phase": phase,
        "command": command,
        "status": _MARK[row.status],
        "returncode": "-" if row.returncode is None else str(row.returncode),
        "elapsed": _seconds(row.elapsed_s),
        "attempts": str(row.attempts),
        "note": _note(row),
    }


def render_summary(report: BenchmarkReport) -> str:
    """A plain-text table of every command, then one line with the benchmark's status and exit code."""
    header = ("PHASE", "COMMAND", "STATUS", "RC", "ELAPSED", "NOTE")
    body = [
        (
            phase,
            command,
            row.status.value,
            "-" if row.returncode is None else str(row.returncode),
            _seconds(row.elapsed_s),
            _note(row),
        )
        for phase, command, row in _rows(report)
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *body]:
        cells = [cell.ljust(width) for cell, width in zip(r[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    phases = ", ".join(f"{p.name}={p.status.value}" for p in report.phases)
    lines.append("")
    if report.progress is not None and not report.progress.committed:
        lines.append(f"progress NOT committed ({report.progress.error}): a resume re-runs those commands")
    lines.append(
        f"benchmark {report.benchmark!r}: {report.status.value} in {_seconds(report.elapsed_s)} "
        f"(phases: {phases or 'none'}; run key {report.run_key}; exit code {report.exit_code})"
    )
    return "\n".join(lines)
