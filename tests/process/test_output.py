"""Output capture keeps every byte as text: partial last lines, binary garbage, CRLF, huge lines, a failing
callback, and a bounded drain when something outside the tree still holds the write end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_crlf_becomes_lf_and_multibyte_characters_survive(containment: str) -> None:
    outcome = run_command(
        [sys.executable, "-c", "import sys; sys.stdout.buffer.write('a\\r\\nb€\\r\\n'.encode())"]
    )
    assert outcome.stdout_tail == "a\nb€"


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
    assert log.read_text().replace("\n", "") == "x" * size


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
