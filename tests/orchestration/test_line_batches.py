"""Output lines reach the run log in order, batched: full batches at once, the rest on a timer or at close."""

from __future__ import annotations

import logging
import time

from grd_blocks.orchestration.prefect_states import LineBatcher


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _logger(name: str) -> tuple[logging.Logger, _Records]:
    logger = logging.getLogger(f"grd.test.lines.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    records = _Records()
    logger.addHandler(records)
    return logger, records


def test_lines_are_sent_in_order_one_record_per_full_batch_and_the_rest_at_close() -> None:
    logger, records = _logger("order")
    sink = LineBatcher(logger, "p.c", max_lines=3, flush_s=3600.0)
    for i in range(7):
        sink("stderr" if i == 4 else "stdout", f"line {i}\n")
    assert len(records.messages) == 2
    sink.close()
    lines = "\n".join(records.messages).split("\n")
    assert lines == [f"p.c {'stderr ' if i == 4 else ''}| line {i}" for i in range(7)]
    assert len(records.messages) == 3


def test_a_quiet_command_s_last_lines_are_sent_by_the_timer_before_it_ends() -> None:
    logger, records = _logger("timer")
    sink = LineBatcher(logger, "p.slow", max_lines=1000, flush_s=0.05)
    sink("stdout", "epoch 1\n")
    end = time.monotonic() + 30
    while not records.messages and time.monotonic() < end:
        time.sleep(0.01)  # polling for the timer's record, bounded
    assert records.messages == ["p.slow | epoch 1"]
    sink.close()
    assert records.messages == ["p.slow | epoch 1"], "close sends nothing twice"
