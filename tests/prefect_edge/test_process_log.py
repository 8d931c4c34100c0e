"""The kill ladder's steps reach the run log of the command they stopped, and only that command's."""

from __future__ import annotations

import logging
import threading
import time

from grd_blocks.prefect_edge.process_log import process_log_to
from grd_blocks.process import run_command
from tests.logcapture import Records, capturing_logger

IGNORES_TERM = "trap '' TERM; sleep 30"
# The deadline leaves the shell time to install its trap even on a loaded machine (a SIGTERM before the
# trap ends it at once, and the ladder never needs SIGKILL).
SETUP_S = 3.0


def _target(name: str) -> tuple[logging.Logger, Records]:
    return capturing_logger(f"run-log.{name}")


def test_term_ignored_then_kill_are_logged_to_the_commands_run_log() -> None:
    logger, capture = _target("mine")
    with process_log_to(logger, "p.slow"):
        outcome = run_command(IGNORES_TERM, deadline=time.monotonic() + SETUP_S, grace_s=0.3)
    assert outcome.timed_out and outcome.kill_sent_s is not None
    levels = [level for level, _ in capture.lines]
    messages = [message for _, message in capture.lines]
    assert levels[:2] == ["INFO", "WARNING"], capture.lines
    assert messages[0].startswith("p.slow: ") and "sent SIGTERM" in messages[0]
    assert "ignored SIGTERM for 0.3s; sending SIGKILL" in messages[1]


def test_a_command_in_another_thread_does_not_write_to_this_run_log() -> None:
    mine, my_capture = _target("quiet")
    other, other_capture = _target("other")

    def elsewhere() -> None:
        with process_log_to(other, "p.other"):
            run_command(IGNORES_TERM, deadline=time.monotonic() + 0.2, grace_s=0.2)

    with process_log_to(mine, "p.quiet"):
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(30)
        outcome = run_command("true", deadline=time.monotonic() + 30, grace_s=1)
    assert outcome.returncode == 0
    assert my_capture.lines == []
    assert any("ignored SIGTERM" in message for _, message in other_capture.lines)
