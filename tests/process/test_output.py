"""Output capture keeps every byte: the log file holds the command's output byte for byte (CRLF, binary, a
huge line without a newline), while the tails and the line callback get readable text (partial last lines,
replacement characters, CRLF as LF, long lines in pieces); a failing callback loses nothing, and the drain is
bounded when something outside the tree still holds the write end."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from grd_blocks.errors import ProcessError
from grd_blocks.process import run_command
from grd_blocks.process.output import MAX_LINE_CHARS, OutputCapture


def test_partial_last_line_is_delivered(containment: str) -> None:
    lines: list[tuple[str, str]] = []
    outcome = run_command("printf 'one\\ntwo-no-newline'", on_line=lambda s, line: lines.append((s, line)))
    assert outcome.stdout_tail == "one\ntwo-no-newline"
    assert lines == [("stdout", "one"), ("stdout", "two-no-newline")]


def test_binary_garbage_is_decoded_with_replacement(containment: str) -> None:
    outcome = run_command("printf 'ok \\377\\376 bytes\\n'; printf '\\303' >&2")
    assert outcome.stdout_tail == "ok \ufffd\ufffd bytes"
    assert outcome.stderr_tail == "\ufffd"


def test_crlf_becomes_lf_in_text_and_stays_crlf_in_the_log(containment: str, tmp_path: Path) -> None:
    log = tmp_path / "crlf.log"
    code = "import sys; sys.stdout.buffer.write('a\\r\\nb€\\r\\n'.encode())"
    outcome = run_command([sys.executable, "-c", code], log_path=log)
    assert outcome.stdout_tail == "a\nb€"
    assert log.read_bytes() == "a\r\nb€\r\n".encode()


def test_the_log_holds_a_huge_line_without_a_newline_byte_for_byte(containment: str, tmp_path: Path) -> None:
    log = tmp_path / "huge.log"
    code = "import sys\nfor i in range(80): sys.stdout.buffer.write(bytes([65 + i % 26]) * 65536)"
    outcome = run_command([sys.executable, "-c", code], log_path=log)
    assert outcome.returncode == 0
    assert log.read_bytes() == b"".join(bytes([65 + i % 26]) * 65536 for i in range(80))


def test_the_log_keeps_each_streams_bytes_in_order_and_whole_lines_together(
    containment: str, tmp_path: Path
) -> None:
    log = tmp_path / "both.log"
    code = (
        "import sys\n"
        "for i in range(2000):\n"
        "    sys.stdout.write(f'out {i}\\n'); sys.stderr.write(f'err {i}\\n')\n"
        "sys.stdout.write('out-end'); sys.stderr.write('err-end')\n"
    )
    run_command([sys.executable, "-c", code], log_path=log)
    lines = log.read_bytes().split(b"\n")
    assert [x for x in lines if x.startswith(b"out ")] == [f"out {i}".encode() for i in range(2000)]
    assert [x for x in lines if x.startswith(b"err ")] == [f"err {i}".encode() for i in range(2000)]
    assert sorted(x for x in lines if x.endswith(b"-end")) in ([b"err-end", b"out-end"], [b"err-endout-end"],
                                                            [b"out-enderr-end"])
    assert len(lines) in (4001, 4002)  # nothing inserted: 4000 newlines, the two unterminated ends


def test_a_stream_that_ends_without_a_newline_never_joins_the_other_stream_s_next_line(
    containment: str, tmp_path: Path
) -> None:
    """stderr ends early, unterminated, while stdout goes on (seen under load with the test above: the log
    had ``err-endout 1534``): its last bytes are written after everything else."""
    log = tmp_path / "early.log"
    code = (
        "import os, sys, time\n"
        "sys.stderr.write('err-end'); sys.stderr.flush(); os.close(2)\n"
        "time.sleep(0.5)  # the command's own pacing: stderr's EOF is read before stdout goes on\n"
        "for i in range(3): print(f'out {i}', flush=True)\n"
    )
    outcome = run_command([sys.executable, "-c", code], log_path=log)
    assert outcome.returncode == 0
    assert log.read_bytes() == b"out 0\nout 1\nout 2\nerr-end"


def test_tail_keeps_only_the_last_characters(containment: str) -> None:
    outcome = run_command("seq 1 2000", tail_chars=20)
    assert len(outcome.stdout_tail) <= 20 and outcome.stdout_tail.endswith("1999\n2000")


def test_a_line_longer_than_the_limit_is_delivered_in_pieces(containment: str, tmp_path: Path) -> None:
    lines: list[str] = []
    size = MAX_LINE_CHARS * 2 + 10
    log = tmp_path / "out.log"
    outcome = run_command(
        [sys.executable, "-c", f"print('x' * {size})"],
        log_path=log,
        on_line=lambda _s, line: lines.append(line),
    )
    assert outcome.returncode == 0
    assert "".join(lines) == "x" * size and all(len(line) <= MAX_LINE_CHARS + 1 for line in lines)
    assert log.read_text() == "x" * size + "\n"  # pieces are for display: the log is untouched


def test_failing_on_line_callback_does_not_lose_output(containment: str, tmp_path: Path) -> None:
    def explode(_stream: str, _line: str) -> None:
        raise RuntimeError("callback bug")

    log = tmp_path / "out.log"
    outcome = run_command("echo a; echo b", on_line=explode, log_path=log)
    assert outcome.returncode == 0 and outcome.stdout_tail == "a\nb"
    assert log.read_text() == "a\nb\n"


def test_stdout_is_a_terminal_and_stderr_a_pipe(containment: str) -> None:
    code = "import sys; print(sys.stdout.isatty(), sys.stderr.isatty())"
    assert run_command([sys.executable, "-c", code]).stdout_tail == "True False"
    assert run_command([sys.executable, "-c", code], use_pty=False).stdout_tail == "False False"


def test_finish_is_bounded_when_a_process_outside_the_tree_holds_the_pipe() -> None:
    capture = OutputCapture(use_pty=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; print('held', flush=True); time.sleep(3600)"],
        stdout=capture.child_stdout,
        stderr=capture.child_stderr,
    )
    try:
        capture.start()
        capture.finish(0.2)  # returns although the holder keeps the pipe open for an hour
        assert capture.done
        assert capture.stdout_tail in ("held", "")  # whatever had arrived is kept
    finally:
        holder.kill()
        holder.wait()


def test_fast_writer_output_is_complete(containment: str) -> None:
    outcome = run_command([sys.executable, "-c", "import sys\nfor i in range(20000): print(i)"])
    assert outcome.returncode == 0 and outcome.stdout_tail.endswith("19998\n19999")


def test_log_path_directories_are_created(containment: str, tmp_path: Path) -> None:
    log = tmp_path / "a" / "b" / "c.log"
    run_command("echo hi", log_path=log)
    assert log.read_text() == "hi\n"


def test_output_printed_during_the_grace_period_is_kept_after_the_inline_reader_hands_over(
    containment: str, tmp_path: Path
) -> None:
    code = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    for i in range(20000): print('bye', i)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True); time.sleep(3600)\n"
    )
    log = tmp_path / "grace.log"
    ready = threading.Event()
    outcome = run_command(
        [sys.executable, "-c", code],
        log_path=log,
        deadline=time.monotonic() + 1.0,
        grace_s=20.0,
        on_line=lambda _s, line: ready.set() if line == "ready" else None,
    )
    assert ready.is_set() and outcome.timed_out and outcome.kill_sent_s is None
    assert outcome.stdout_tail.endswith("bye 19999")
    assert log.read_text().count("\n") == 20001


def test_short_command_output_needs_no_reader_thread(
    containment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_over: list[bool] = []
    original = OutputCapture.hand_over

    def record(self: OutputCapture) -> None:
        handed_over.append(True)
        original(self)

    monkeypatch.setattr(OutputCapture, "hand_over", record)
    lines: list[str] = []
    outcome = run_command("echo one; echo two >&2", on_line=lambda _s, line: lines.append(line))
    assert outcome.returncode == 0 and lines == ["one", "two"] and handed_over == []


def test_an_unwritable_log_path_is_a_clear_error_and_breaks_nothing(containment: str, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log directory should be")
    with pytest.raises(ProcessError, match=r"cannot open the log file .*not-a-dir.*pass a writable log_path"):
        run_command(["true"], log_path=blocker / "c.log")
    assert run_command(["true"], log_path=tmp_path / "ok.log").returncode == 0
