"""Progress snapshots: every recorded row reaches the store (coalesced), survives later attempts, and exit;
skipped rows are not kept; a store that fails warns once and is never overwritten with fewer rows."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from grd_blocks.checkpoint.run import RunCheckpoints
from grd_blocks.orchestration.progress import ProgressLog
from grd_blocks.orchestration.status import Status
from grd_blocks.prefect_edge.store import open_store
from grd_blocks.report import CommandReport

ROOT = Path(__file__).resolve().parents[2]


class _Counting:
    """A real progress prefix that counts its snapshot writes and can be told to fail reads."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.saves = 0
        self.fail_reads = False

    def save(self, state: Any, *, step: int | None = None) -> object:
        self.saves += 1
        return self.inner.save(state, step=step)

    def latest(self) -> object | None:
        if self.fail_reads:
            raise OSError("store unreachable")
        ref: object | None = self.inner.latest()
        return ref

    def load(self) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.inner.load()
        return result


def _prefix(tmp_path: Path) -> Any:
    return open_store(str(tmp_path / "ckpt"), "run-1")[1]


def _log(tmp_path: Path, *, interval_s: float = 0.5) -> ProgressLog:
    return ProgressLog(_prefix(tmp_path), logger=logging.getLogger("test"), interval_s=interval_s)


def _row(name: str, status: Status = Status.COMPLETED, attempts: int = 1) -> CommandReport:
    return CommandReport(name=name, status=status, returncode=0 if status is Status.COMPLETED else 1,
                         attempts=attempts, stdout_tail=f"{name} out\n")


def test_a_committed_row_is_what_the_next_attempt_reads(tmp_path: Path) -> None:
    log = _log(tmp_path)
    row = CommandReport(name="fit", status=Status.TIMEOUT, returncode=-15, attempts=2, stdout_tail="step 3\n")
    log.record("train", row)
    log.close()
    assert _log(tmp_path).previous("train", "fit") == row
    assert (tmp_path / "ckpt" / "run-1" / "progress" / "LATEST.json").is_file()


def test_rows_recorded_faster_than_the_interval_are_coalesced_and_all_stored_by_flush(tmp_path: Path) -> None:
    prefix = _Counting(_prefix(tmp_path))
    log = ProgressLog(prefix, logger=logging.getLogger("test"), interval_s=3600.0)
    rows = [_row(f"c{i}") for i in range(50)]
    for row in rows:
        log.record("p", row)
    assert log.flush()
    assert 1 <= prefix.saves <= 2, "50 rows inside one interval: the first write, then one at flush at most"
    fresh = _log(tmp_path)
    assert [fresh.previous("p", row.name) for row in rows] == rows
    log.close()
    assert prefix.saves <= 2, "close after a flush with nothing new writes nothing"


def _switches(thread: threading.Thread) -> int:
    """How often the OS switched ``thread`` out because it waited (its voluntary context switches)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("voluntary_ctxt_switches"))
    return int(line.split()[1])


def test_rows_recorded_while_the_writer_waits_out_its_interval_do_not_wake_it(tmp_path: Path) -> None:
    """A wake-up per row was a thread switch per command of a long phase (on two cores, ~5% of the command
    thread's time at 3,000 x `true`). Counted by the OS: the writer thread's voluntary context switches."""
    log = _log(tmp_path, interval_s=3600.0)
    log.record("p", _row("first"))  # written at once; the writer then waits out its interval
    assert log.flush()
    log.record("p", _row("second"))  # new work: this one wakes it (it then waits for the interval)
    writer = log._writer
    assert writer is not None
    rows = [_row(f"c{i}") for i in range(200)]
    before = _switches(writer)
    for row in rows:
        time.sleep(0.001)  # the command runs (the recording thread lets go of the GIL, as a command does)
        log.record("p", row)
    woken = _switches(writer) - before
    assert woken < 20, f"the writer was switched out {woken} times while 200 rows were recorded"
    assert log.flush()  # and every row still reaches the store
    fresh = _log(tmp_path)
    assert fresh.previous("p", "c199") == rows[-1] and fresh.previous("p", "second") == _row("second")
    log.close()


def test_a_later_attempt_keeps_the_rows_of_earlier_ones(tmp_path: Path) -> None:
    first = _log(tmp_path)
    first.record("p", _row("a"))
    first.record("p", _row("b", Status.FAILED))
    first.close()
    second = _log(tmp_path)
    assert second.previous("p", "b") == _row("b", Status.FAILED)
    second.record("p", _row("b", attempts=2))
    second.close()
    third = _log(tmp_path)
    assert third.previous("p", "a") == _row("a")
    assert third.previous("p", "b") == _row("b", attempts=2)
    latest = RunCheckpoints.from_url(str(tmp_path / "ckpt" / "run-1" / "progress")).checkpoints()
    assert len(latest) <= 2, "old snapshots are pruned (each holds every row)"


def test_skipped_rows_are_not_committed(tmp_path: Path) -> None:
    log = _log(tmp_path)
    log.record("p", CommandReport(name="x", status=Status.SKIPPED, reason="stop_phase"))
    log.close()
    assert _log(tmp_path).previous("p", "x") is None


def test_a_store_that_cannot_be_read_is_never_overwritten_with_fewer_rows(tmp_path: Path) -> None:
    first = _log(tmp_path)
    first.record("p", _row("a"))
    first.close()
    prefix = _Counting(_prefix(tmp_path))
    prefix.fail_reads = True
    second = ProgressLog(prefix, logger=logging.getLogger("test"))
    assert second.previous("p", "a") is None
    second.record("p", _row("b"))
    assert not second.flush()
    second.close()
    assert prefix.saves == 0 and "store unreachable" in second.errors[0]
    assert _log(tmp_path).previous("p", "a") == _row("a")


def test_rows_still_pending_are_written_when_the_process_exits(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import logging, sys
        sys.path.insert(0, {str(ROOT)!r})
        from grd_blocks.orchestration.progress import ProgressLog
        from grd_blocks.prefect_edge.store import open_store
        from grd_blocks.report import CommandReport
        log = ProgressLog(open_store({str(tmp_path / "ckpt")!r}, "run-1")[1], logger=logging.getLogger("t"),
                          interval_s=3600.0)
        for i in range(20):
            log.record("p", CommandReport(name=f"c{{i}}", status="COMPLETED", attempts=1))
        # no flush, no close: interpreter exit must write the last snapshot
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    fresh = _log(tmp_path)
    assert all(fresh.previous("p", f"c{i}") is not None for i in range(20))


class _BrokenPrefix:
    def save(self, state: Any, *, step: int | None = None) -> object:
        raise OSError("disk full")

    def latest(self) -> object | None:
        return None

    def load(self) -> dict[str, Any] | None:
        return None


def test_a_failing_store_is_an_error_line_and_the_outcome_says_not_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = ProgressLog(_BrokenPrefix(), logger=logging.getLogger("grd.test"))
    with caplog.at_level(logging.WARNING, logger="grd.test"):
        assert log.previous("p", "a") is None
        log.record("p", CommandReport(name="a", status=Status.COMPLETED, attempts=1))
        log.record("p", CommandReport(name="b", status=Status.COMPLETED, attempts=1))
        assert not log.flush()
        log.close()
        log.close()  # closing twice says it once
    assert log.errors and all("disk full" in e for e in log.errors)
    assert [(r.levelname, r.message.split(" (")[0]) for r in caplog.records] == [
        ("ERROR", "progress commit failed"), ("ERROR", "progress NOT committed")
    ]
    assert log.outcome() == (False, "commit: disk full")


def test_an_unreadable_store_is_never_a_committed_outcome(tmp_path: Path) -> None:
    prefix = _Counting(_prefix(tmp_path))
    prefix.fail_reads = True
    log = ProgressLog(prefix, logger=logging.getLogger("test"))
    assert log.previous("p", "a") is None
    log.close()  # nothing recorded, but earlier attempts' rows could not be read: a resume would miss them
    assert log.outcome() == (False, "read: store unreachable")


def test_a_recorded_rows_text_is_the_one_its_phase_report_keeps_not_a_copy(tmp_path: Path) -> None:
    log = _log(tmp_path)
    row = _row("fit")
    log.record("train", row)
    assert len(log.texts) == 1 and row.kept_in(log.texts) == 0  # kept once: the report's rows refer to it
    assert log.finished("train", "fit") == row
    log.close()
    assert _log(tmp_path).previous("train", "fit") == row


def test_a_large_snapshot_goes_to_the_store_without_a_copy_of_it_in_memory(tmp_path: Path) -> None:
    peak = _snapshot_peak(tmp_path, 8_000)
    files = sorted((tmp_path / "ckpt" / "run-1" / "progress").glob("*/*.json"))
    snapshot = max((f for f in files if f.name != "MANIFEST.json"), key=lambda f: f.stat().st_size)
    size = snapshot.stat().st_size
    assert size > 2 * 2**20  # more than one piece of a local save's stream
    assert peak < size / 2, (peak, size)  # joined into one buffer it cost 1.6 times its size
    again = _log(tmp_path)
    assert again.previous("p", "c0") == _row("c0") and again.previous("p", "c7999") == _row("c7999")
    assert len(json.loads(snapshot.read_bytes())["rows"]) == 8_000


class _Reading(_Counting):
    """A real progress prefix that reads back each snapshot as it is saved (its rows' JSON, in order), once
    ``during`` ran: what the flow does while the writer walks the rows (more commands finish)."""

    def __init__(self, inner: Any, during: Callable[[], int]) -> None:
        super().__init__(inner)
        self.during = during
        self.snapshots: list[tuple[int, dict[str, Any]]] = []  # (rows recorded before it, its rows)

    def save(self, state: Any, *, step: int | None = None) -> object:
        before = self.during()
        self.snapshots.append((before, json.loads(state["rows"].encoded())))
        return super().save(state, step=step)


def test_a_snapshot_holds_every_row_recorded_before_it_in_order_while_commands_keep_finishing(
    tmp_path: Path,
) -> None:
    rows = [_row(f"c{i}") for i in range(3_000)]
    recorded = [0]
    log: ProgressLog

    def during() -> int:  # 100 more commands finish on another thread while this snapshot is written
        before = recorded[0]
        batch = rows[before:before + 100]
        def finish() -> None:
            for row in batch:
                log.record("p", row)

        worker = threading.Thread(target=finish)
        worker.start()
        worker.join()
        recorded[0] += len(batch)
        return before

    prefix = _Reading(_prefix(tmp_path), during)
    log = ProgressLog(prefix, logger=logging.getLogger("test"), interval_s=0.0)
    log.record("p", rows[0])
    recorded[0] = 1
    while not log.flush():  # each snapshot saw rows recorded during it: one more
        pass
    again = _row("c7", attempts=2)
    log.record("p", again)  # recorded again: keeps its place, holds its newest row
    log.close()
    assert recorded[0] == 3_000 and len(prefix.snapshots) >= 30
    for before, snapshot in prefix.snapshots:  # each: exactly the commands recorded before it, in order
        assert list(snapshot) == [f"p.c{i}" for i in range(before)]
        assert all(CommandReport.model_validate(entry["row"]) == rows[int(key[3:])] and entry["phase"] == "p"
                   for key, entry in snapshot.items() if key != "p.c7")
    final = prefix.snapshots[-1][1]
    assert list(final)[7] == "p.c7" and CommandReport.model_validate(final["p.c7"]["row"]) == again
    assert _log(tmp_path).previous("p", "c7") == again and log.finished("p", "c7") == again


def _snapshot_peak(tmp_path: Path, count: int) -> int:
    """Bytes a snapshot of ``count`` rows allocates at its peak (its pieces are ``mmap``s: not counted),
    measured in a process of its own: tracemalloc counts every thread's allocations, and in a test worker
    other tests' threads (Prefect's event and log workers) may allocate meanwhile."""
    script = textwrap.dedent(f"""
        import logging, sys, tracemalloc
        sys.path.insert(0, {str(ROOT)!r})
        from grd_blocks.orchestration.progress import ProgressLog
        from grd_blocks.prefect_edge.store import open_store
        from grd_blocks.report import CommandReport
        log = ProgressLog(open_store({str(tmp_path / "ckpt")!r}, "run-1")[1], logger=logging.getLogger("t"))
        rows = [CommandReport(name=f"c{{i}}", status="COMPLETED", returncode=0, attempts=1,
                              stdout_tail=f"c{{i}} out\\n") for i in range({count})]
        for row in rows[:-1]:
            log.record("p", row)
        log.flush()  # the rows' texts and the writer thread exist before the measured snapshot
        log.record("p", rows[-1])
        tracemalloc.start()
        assert log.flush()
        print("PEAK", tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        log.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert len(_log(tmp_path)._load() or {}) == count
    return int(done.stdout.split("PEAK", 1)[1].split()[0])


def test_what_a_snapshot_allocates_does_not_grow_with_the_runs_length(tmp_path: Path) -> None:
    """glibc serves blocks up to the largest mmapped one it freed from its heaps, which then grow with a long
    run: a snapshot copied the run's whole row index (0.3 MB at 8,000 commands) and encoded a snapshot of up
    to 1 MiB at once (a 2,000-command run's: 0.7 MB)."""
    small, large = _snapshot_peak(tmp_path / "small", 2_000), _snapshot_peak(tmp_path / "large", 8_000)
    assert large < small + 64 * 1024, (small, large)
    assert max(small, large) < 320 * 1024, (small, large)


def test_a_local_save_streams_a_json_payload_in_pieces_of_128_kib(tmp_path: Path) -> None:
    from grd_blocks.checkpoint.payload.serialization import TEXT_PIECE_BYTES, JsonText

    run = RunCheckpoints.from_url(str(tmp_path / "store" / "run"))
    rows = {f"c{i}": JsonText({"row": "x" * 200, "i": i}) for i in range(2_000)}
    run.save({"rows": JsonText.joined(rows)}, step=1)
    manifest = json.loads((tmp_path / "store" / "run" / "step_1" / "MANIFEST.json").read_bytes())
    (entry,) = manifest["files"].values()
    assert entry["chunk_size"] == TEXT_PIECE_BYTES == 128 * 1024 and len(entry["chunks"]) > 3
    loaded = run.load()
    assert loaded is not None and loaded["rows"] == {key: text.value() for key, text in rows.items()}
    assert run.verify("step_1") == []
