"""Progress of a run: the final row of every finished command, kept in the store so that a retry resumes.

Invariant: the store holds progress *snapshots* under ``{store}/{run_key}/progress`` (one JSON checkpoint
each, step = snapshot number): ``rows`` maps ``phase.command`` to the row of its latest finished attempt. A
snapshot holds every row read at start plus every row recorded before it was taken, so a newer snapshot never
drops a row; a snapshot is written only after the previous one was read (a store that could not be read is
never overwritten with fewer rows). A row is recorded only after its command ended, so a row seen on resume is
final. Only COMPLETED rows are reused; failed, timed-out and cancelled commands run again with the attempt
count carried on. A store that fails does not stop the benchmark, but lost progress is never a success: the
first failure of a read or a commit is an ERROR line in the run's log (kept in ``errors``), and once the run
is closed ``outcome()`` says whether every recorded row reached the store (``committed``) and, if not, the
last error; the report carries it and the run then exits non-zero (run.py).

Writes are coalesced by one background thread: the first row is written at once, later ones at most every
``interval_s`` (default 0.5 s; stretched to ``COST_FACTOR`` times the last write's duration, so snapshot
writes of a huge run stay under ~10% of one core) while rows keep arriving (a row wakes the writer only when
it waits for work, never while it waits out the interval), and at once on ``flush()`` (the
flows flush at the end of each phase), ``close()`` (end of the run, also on SIGTERM or Ctrl-C through the
flows' ``finally``) and at interpreter exit. Window: a command that ended less than one interval plus one
snapshot write before the process was killed hard (SIGKILL, power loss) may be missing from the store; it then
simply runs again on resume. A command reported COMPLETED whose row reached the store is always skipped on
resume.

Cost: each row is encoded to JSON once and kept compressed in the run's ``RowTexts``
(``CommandReport.kept_in``: the text its phase report keeps too); a snapshot is written from those texts as
it goes to the store, so its CPU is a join and a digest of the snapshot, not an encode, decode and compare
of every row, and a row costs the run its text once, not once for the report and once here. A snapshot reads
the run's row index (``_Recorded``, append-only) a block at a time while more rows are recorded, and the
local store writes it in 128 KiB pieces: what a snapshot allocates does not grow with the run's length.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from grd_blocks.checkpoint.payload.serialization import JsonText
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CommandReport
from grd_blocks.row_texts import RowTexts, StoredText

__all__ = ["COST_FACTOR", "DEFAULT_INTERVAL_S", "FORMAT", "ProgressLog", "ProgressPrefix"]

DEFAULT_INTERVAL_S = 0.5
COST_FACTOR = 10.0
FORMAT = "grd-progress/1"
_EXIT_FLUSH_S = 10.0  # how long interpreter exit waits for the last snapshot


class ProgressPrefix(Protocol):
    """The part of ``RunCheckpoints`` progress uses: one checkpoint prefix."""

    def save(self, state: Any, *, step: int | None = None) -> object: ...
    def latest(self) -> object | None: ...
    def load(self) -> dict[str, Any] | None: ...


class ProgressLog:
    """Reads and commits command rows of one run under ``root`` (None: progress is not kept). Thread-safe."""

    def __init__(self, root: ProgressPrefix | None, *, logger: logging.Logger | logging.LoggerAdapter[Any],
                 interval_s: float = DEFAULT_INTERVAL_S, texts: RowTexts | None = None) -> None:
        self.root = root
        self.logger = logger
        self.interval_s = interval_s
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self.texts = RowTexts() if texts is None else texts  # every row's text: the run's phase reports too
        self._recorded = _Recorded()  # guarded by _cond
        self._phase_texts: dict[str, JsonText] = {}
        self._version = 0  # bumped by every record
        self._saved_version = 0  # version of the last snapshot that reached the store
        self._attempted_version = 0  # version of the last snapshot tried
        self._started = 0  # snapshot writes started / finished (success or not)
        self._finished = 0
        self._flush_wanted = False
        self._stopping = False
        self._last_write = -math.inf
        self._last_cost = 0.0  # seconds the last snapshot write took
        self._writer: threading.Thread | None = None
        self._load_lock = threading.Lock()
        self._loaded: dict[str, dict[str, Any]] | None = None  # the snapshot read at start
        self._loaded_texts: dict[str, JsonText] | None = None  # its rows encoded (once, by the writer)
        self._load_tried = False
        self._read_failed = False  # the snapshot of earlier attempts could not be read
        self._closed = False
        self._step = 0  # number of the newest snapshot in the store

    # --- reading ----------------------------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]] | None:
        """The rows of the newest snapshot (read once), or None while the store cannot be read."""
        with self._load_lock:
            if self._loaded is not None or self.root is None:
                return self._loaded
            try:
                ref = self.root.latest()
                state = self.root.load() if ref is not None else None
            except Exception as exc:
                self._read_failed = True
                self._fail("read", exc)
                return None
            finally:
                self._load_tried = True
            rows = state.get("rows") if isinstance(state, dict) else None
            self._loaded = dict(rows) if isinstance(rows, dict) else {}
            self._step = int(getattr(ref, "index", 0) or 0)
            return self._loaded

    def earlier_snapshot(self) -> bool | None:
        """Whether an earlier attempt of this run key committed a snapshot (None: it cannot be read)."""
        if self.root is None or self._load() is None:
            return None
        return self._step > 0

    def previous(self, phase: str, command: str) -> CommandReport | None:
        """The row committed by an earlier attempt of this run key, or None."""
        if self.root is None:
            return None
        loaded = self._loaded if self._load_tried else self._load()
        entry = (loaded or {}).get(f"{phase}.{command}")
        if not isinstance(entry, dict) or "row" not in entry:
            return None
        try:
            return CommandReport.model_validate(entry["row"])
        except ValueError as exc:
            self._fail(f"read of {phase}.{command}", exc)
            return None

    def finished(self, phase: str, command: str) -> CommandReport | None:
        """The row kept for ``phase.command`` (recorded by this attempt or loaded from an earlier one)."""
        with self._cond:
            number = self._recorded.number(phase, command)
        return None if number is None else CommandReport.model_validate_json(self.texts.text(number))

    # --- writing ----------------------------------------------------------------------------------------

    def record(self, phase: str, row: CommandReport) -> None:
        """Keep ``row`` (the final result of one attempt of ``phase.row.name``) for the next snapshot."""
        if self.root is None or row.status is Status.SKIPPED:
            return
        number = row.kept_in(self.texts)  # the text its phase report keeps: not a copy
        with self._cond:
            idle = not self._has_work()  # the writer waits for work, not for its interval to pass
            self._recorded.keep(phase, row.name, number)
            self._version += 1
            if self._writer is None and not self._stopping:
                self._writer = threading.Thread(target=self._write_loop, name="grd-progress", daemon=True)
                self._writer.start()
                _OPEN.add(self)
            if idle:  # waking it for every row would cost a thread switch per command; mid-interval it
                self._cond.notify_all()  # wakes at the interval's end anyway, and a write takes every row

    def _phase_text(self, phase: str) -> JsonText:
        text = self._phase_texts.get(phase)
        if text is None:
            text = self._phase_texts[phase] = JsonText(phase)
        return text

    def _has_work(self) -> bool:
        return self._version > self._attempted_version or self._flush_wanted

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._has_work() and not self._stopping:
                    self._cond.wait()
                if not self._has_work():
                    return
                while not (self._flush_wanted or self._stopping):
                    wait = max(self.interval_s, COST_FACTOR * self._last_cost)
                    left = self._last_write + wait - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                version = self._version
                count = len(self._recorded)  # the snapshot's rows: the first `count` commands' newest
                self._flush_wanted = False
                self._started += 1
            began = time.monotonic()
            saved = self._write(count)
            with self._cond:
                self._last_cost = time.monotonic() - began
                self._attempted_version = version
                if saved:
                    self._saved_version = version
                self._finished += 1
                self._last_write = time.monotonic()
                self._cond.notify_all()

    def _write(self, count: int) -> bool:
        assert self.root is not None
        loaded = self._load()
        if loaded is None:
            return False  # never replace a snapshot we could not read
        try:
            if self._loaded_texts is None:
                self._loaded_texts = {key: JsonText(entry) for key, entry in loaded.items()}
            # each row was encoded once when it was recorded: a snapshot joins texts, it does not re-encode
            # (and decode, to check) every row of the run at every write
            members = _Entries(self._loaded_texts, self._recorded, count, self._cond, self._phase_text,
                               self.texts)
            snapshot = {"format": FORMAT, "rows": JsonText.joined(members, sort=False)}
            self.root.save(snapshot, step=self._step + 1)
        except Exception as exc:
            self._fail("commit", exc)
            return False
        self._step += 1
        return True

    def _fail(self, what: str, exc: BaseException) -> None:
        with self._cond:
            first = not any(error.startswith(f"{what}: ") for error in self.errors)
            self.errors.append(f"{what}: {exc}")
        if first:
            self.logger.error("progress %s failed (%s); the run goes on, but a resume of it re-runs every "
                              "command whose result is not committed; the run will exit non-zero", what, exc)

    def outcome(self) -> tuple[bool, str | None]:
        """(every recorded row reached the store and the earlier attempts' rows were readable, the last error
        if not); meaningful once ``close()`` returned."""
        with self._cond:
            committed = self.root is None or (not self._read_failed and self._saved_version >= self._version)
            return committed, (None if committed else (self.errors[-1] if self.errors else "not flushed"))

    def flush(self, timeout: float | None = None) -> bool:
        """Write every recorded row now and wait for it (``timeout`` seconds at most); True once stored."""
        end = math.inf if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._writer is None or self._saved_version >= self._version:
                return self._saved_version >= self._version
            need = self._started + 1  # a write started from now on holds every row recorded so far
            self._flush_wanted = True
            self._cond.notify_all()
            while self._finished < need and self._writer is not None and self._writer.is_alive():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
            return self._saved_version >= self._version

    def close(self) -> None:
        """Flush, then stop the writer thread; the first close of a run whose progress was lost logs why."""
        self.flush()
        with self._cond:
            self._stopping = True
            writer, self._writer = self._writer, None
            self._cond.notify_all()
        if writer is not None:
            writer.join()
        _OPEN.discard(self)
        committed, error = self.outcome()
        if not committed and not self._closed:
            lost = self._version - self._saved_version
            self.logger.error("progress NOT committed (%s): %d command result(s) of this attempt are not in "
                              "the store; the run exits non-zero", error, lost)
        self._closed = True


class _Recorded:
    """The newest row number of each command this attempt recorded, in the order commands were first
    recorded. Append-only (a command recorded again keeps its place and takes its new number), so a
    snapshot reads the first ``count`` commands a block at a time while more are being recorded, instead of
    copying them all first: such a copy of a 10,000-command run is a 0.3-0.6 MB block per snapshot, and
    glibc, once blocks that large were freed, serves later ones from its heaps, which then keep growing.
    Not thread-safe: the ``ProgressLog``'s lock guards it."""

    def __init__(self) -> None:
        self._phases: list[str] = []  # phase names, in the order first seen
        self._phase_of = array("L")  # per command: its phase's index in _phases
        self._names: list[str] = []  # per command: its name
        self._numbers = array("q")  # per command: its newest row's number in the run's RowTexts
        self._where: dict[str, tuple[int, dict[str, int]]] = {}  # phase -> (its index, command -> place)

    def __len__(self) -> int:
        return len(self._names)

    def keep(self, phase: str, name: str, number: int) -> None:
        """``number`` is now the newest row of ``phase.name``."""
        where = self._where.get(phase)
        if where is None:
            where = self._where[phase] = (len(self._phases), {})
            self._phases.append(phase)
        index, places = where
        place = places.get(name)
        if place is not None:
            self._numbers[place] = number
            return
        places[name] = len(self._names)
        self._phase_of.append(index)
        self._names.append(name)
        self._numbers.append(number)

    def number(self, phase: str, name: str) -> int | None:
        """The newest row number of ``phase.name``, or None if it was not recorded."""
        where = self._where.get(phase)
        place = None if where is None else where[1].get(name)
        return None if place is None else self._numbers[place]

    def block(self, start: int, stop: int) -> list[tuple[str, str, int]]:
        """(phase, command, newest row number) of the commands first recorded ``start``-th to ``stop``-th."""
        phases, slots = self._phases, slice(start, stop)
        return [(phases[phase], name, number) for phase, name, number
                in zip(self._phase_of[slots], self._names[slots], self._numbers[slots], strict=True)]


_BLOCK = 256
"""Commands a snapshot reads from ``_Recorded`` per hold of the lock."""


class _Entries(Mapping[str, JsonText]):
    """A snapshot's rows: ``{"phase": ..., "row": ...}`` under ``phase.command``, the earlier attempts' first
    (those this attempt did not record again), then the first ``count`` commands this attempt recorded, in
    the order they were first recorded (the order their texts were kept in: reading them decompresses each
    block once), each with its newest row; each entry is made as it is read, so a snapshot of a long run
    holds no object per row."""

    def __init__(self, loaded: dict[str, JsonText], recorded: _Recorded, count: int,
                 lock: threading.Condition, phase_text: Callable[[str], JsonText], texts: RowTexts) -> None:
        self._loaded, self._recorded, self._count, self._lock = loaded, recorded, count, lock
        self._phase_text, self._texts = phase_text, texts
        mine = {f"{phase}.{name}" for phase, name, _ in self._mine()} if loaded else set()
        self._earlier = [key for key in loaded if key not in mine]

    def _mine(self) -> Iterator[tuple[str, str, int]]:
        for start in range(0, self._count, _BLOCK):
            with self._lock:
                block = self._recorded.block(start, min(start + _BLOCK, self._count))
            yield from block

    def __len__(self) -> int:
        return len(self._earlier) + self._count

    def items(self) -> Iterator[tuple[str, JsonText]]:  # type: ignore[override]
        for key in self._earlier:
            yield key, self._loaded[key]
        for phase, name, number in self._mine():
            yield f"{phase}.{name}", JsonText.joined({"phase": self._phase_text(phase),
                                                      "row": StoredText(self._texts, number)})

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.items())

    def __getitem__(self, key: str) -> JsonText:
        for name, text in self.items():
            if name == key:
                return text
        raise KeyError(key)


_OPEN: weakref.WeakSet[ProgressLog] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for log in list(_OPEN):
        log.flush(timeout=_EXIT_FLUSH_S)
