"""Output lines reach the run log in order, batched: full batches by the sender, the rest on a timer or at
close; a command printing faster than the log takes never waits, and what the log drops is said in one
line."""

from __future__ import annotations

import logging
import threading
import time

from grd_blocks.orchestration.line_batches import LineBatcher
from tests.logcapture import Records, capturing_logger


def _logger(name: str) -> tuple[logging.Logger, Records]:
    return capturing_logger(f"lines.{name}")


def test_lines_are_sent_in_order_one_record_per_full_batch_and_the_rest_at_close() -> None:
    logger, records = _logger("order")
    sink = LineBatcher(logger, "p.c", max_lines=3, flush_s=3600.0)
    for i in range(7):
        sink("stderr" if i == 4 else "stdout", f"line {i}\n")
    _wait_for_records(records, 2)
    assert len(records.messages) == 2
    sink.close()
    lines = "\n".join(records.messages).split("\n")
    assert lines == [f"p.c {'stderr ' if i == 4 else ''}| line {i}" for i in range(7)]
    assert len(records.messages) == 3


def _wait_for_records(records: Records, count: int) -> None:
    end = time.monotonic() + 30
    while len(records.messages) < count and time.monotonic() < end:
        time.sleep(0.01)  # polling for the sender thread's records, bounded


def test_a_quiet_command_s_last_lines_are_sent_by_the_timer_before_it_ends() -> None:
    logger, records = _logger("timer")
    sink = LineBatcher(logger, "p.slow", max_lines=1000, flush_s=0.05)
    sink("stdout", "epoch 1\n")
    _wait_for_records(records, 1)
    assert records.messages == ["p.slow | epoch 1"]
    sink.close()
    assert records.messages == ["p.slow | epoch 1"], "close sends nothing twice"


def test_every_line_after_an_idle_spell_is_sent_by_the_timer_while_the_command_runs() -> None:
    """A command printing one line now and then (a training step a minute): each line is its own record,
    sent by the timer, not held until the command ends or 200 lines have queued."""
    logger, records = _logger("idle")
    sink = LineBatcher(logger, "p.paced", max_lines=200, flush_s=0.05)
    for step in range(4):
        sink("stdout", f"step {step}\n")
        _wait_for_records(records, step + 1)  # the sender was idle, waiting for a first line
        assert records.messages == [f"p.paced | step {i}" for i in range(step + 1)]
    sink.close()
    assert len(records.messages) == 4


class _Slow(logging.Handler):
    """A run log that takes a long time per record (Prefect's API handler under load)."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.gate.wait(30)
        self.messages.append(record.getMessage())


def test_a_slow_run_log_never_holds_the_command_up_and_every_dropped_line_is_counted_in_place() -> None:
    release = threading.Event()
    logger = logging.getLogger("grd.test.lines.slow")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    slow = _Slow(release)
    logger.addHandler(slow)
    sink = LineBatcher(logger, "p.fast", max_lines=10, flush_s=0.01, max_backlog=100,
                       log_path="/x/p.fast.log")
    for i in range(5000):  # the first batch is stuck in the handler: none of these calls may wait for it
        sink("stdout", f"line {i}")
    release.set()
    sink.close()
    lines = "\n".join(slow.messages).split("\n")
    shown = [line for line in lines if "| line " in line]
    notes = [line for line in lines if "[grd:" in line]
    assert notes and all("not shown here" in note and "/x/p.fast.log" in note for note in notes)
    assert sum(int(note.split("[grd: ")[1].split(" ")[0]) for note in notes) + len(shown) == 5000
    numbers = [int(line.rsplit(" ", 1)[1]) for line in shown]
    assert numbers == sorted(numbers) and numbers[0] == 0  # in order, the earliest ones kept


def test_lines_beyond_the_rate_are_counted_not_split_and_the_log_file_keeps_them(tmp_path: object) -> None:
    """Through run_command: 200,000 lines at full speed; the run log shows at most its rate and counts the
    rest in place; the command's log file holds every byte."""
    import sys
    from pathlib import Path

    from grd_blocks.process import run_command

    logger, records = _logger("rate")
    log = Path(str(tmp_path)) / "fast.log"
    sink = LineBatcher(logger, "p.fast", max_per_s=500, log_path=str(log))
    code = "import sys\nfor i in range(200000): sys.stdout.write(f'{i:09d}\\n')"
    outcome = run_command([sys.executable, "-c", code], on_line=sink, log_path=log)
    sink.close()
    assert outcome.returncode == 0
    assert log.read_bytes() == b"".join(f"{i:09d}\n".encode() for i in range(200000))
    lines = "\n".join(records.messages).split("\n")
    shown = [line for line in lines if "[grd:" not in line]
    dropped = sum(int(line.split("[grd: ")[1].split(" ")[0]) for line in lines if "[grd:" in line)
    assert len(shown) < 200000 and dropped > 0
    assert len(shown) + dropped == 200000  # every line is shown or counted
    numbers = [line.rsplit(" ", 1)[1] for line in shown]
    assert all(len(n) == 9 for n in numbers) and numbers == sorted(numbers)  # whole lines, in order
