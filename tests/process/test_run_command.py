"""run_command's contract outside the kill itself: normal and failing exits, spawn errors that come back as
outcomes, commands that never start, invalid arguments, and output kept before a kill."""

from __future__ import annotations

import math
import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from grd_blocks.errors import ProcessError
from grd_blocks.process import run_command
from tests.process.helpers import GateClock


def _env_without_unbuffered() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}


def test_command_that_completes_normally_returns_zero_and_its_output(
    containment: str, tmp_path: Path
) -> None:
    lines: list[tuple[str, str]] = []
    log = tmp_path / "logs" / "hello.log"
    outcome = run_command(
        "echo hello; echo oops >&2; echo world",
        log_path=log,
        on_line=lambda stream, line: lines.append((stream, line)),
    )
    assert outcome.returncode == 0 and not outcome.timed_out and not outcome.cancelled
    assert outcome.containment == containment and outcome.survivors == 0 and outcome.leftover == 0
    assert outcome.term_sent_s is None and outcome.kill_sent_s is None and outcome.spawn_error is None
    assert outcome.stdout_tail == "hello\nworld" and outcome.stderr_tail == "oops"
    assert ("stdout", "hello") in lines and ("stderr", "oops") in lines and ("stdout", "world") in lines
    assert sorted(log.read_text().splitlines()) == ["hello", "oops", "world"]
    assert outcome.log_path == str(log)


def test_list_command_runs_without_a_shell_and_keeps_arguments_intact(containment: str) -> None:
    outcome = run_command([sys.executable, "-c", "import sys; print(sys.argv[1:])", "a b", "$HOME", "*"])
    assert outcome.returncode == 0
    assert outcome.stdout_tail == "['a b', '$HOME', '*']"


def test_nonzero_exit_is_reported_and_not_a_timeout(containment: str) -> None:
    outcome = run_command("echo failing >&2; exit 3")
    assert outcome.returncode == 3 and not outcome.timed_out and outcome.stderr_tail == "failing"


def test_child_gets_pythonunbuffered_unless_env_sets_it(containment: str) -> None:
    default = run_command('printf "%s" "$PYTHONUNBUFFERED"', env=_env_without_unbuffered())
    assert default.stdout_tail == "1"
    chosen = run_command('printf "%s" "$PYTHONUNBUFFERED"', env={**os.environ, "PYTHONUNBUFFERED": "0"})
    assert chosen.stdout_tail == "0"


def test_cwd_and_env_are_applied(containment: str, tmp_path: Path) -> None:
    outcome = run_command('pwd; printf "%s\\n" "$SEED"', cwd=tmp_path, env={"PATH": os.defpath, "SEED": "7"})
    assert outcome.stdout_tail.splitlines() == [str(tmp_path), "7"]


def test_missing_executable_is_a_spawn_error_naming_it(containment: str) -> None:
    outcome = run_command(["grd-no-such-program-x", "--flag"])
    assert outcome.returncode == 127 and outcome.spawn_error is not None
    assert "grd-no-such-program-x" in outcome.spawn_error and "PATH" in outcome.spawn_error


def test_missing_cwd_is_a_spawn_error_naming_it(containment: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    log = tmp_path / "out.log"
    outcome = run_command("echo hi", cwd=missing, log_path=log)
    assert str(missing) in log.read_text()
    assert (
        outcome.returncode == 127 and outcome.spawn_error is not None and str(missing) in outcome.spawn_error
    )


def test_non_executable_file_is_a_spawn_error(containment: str, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    outcome = run_command([str(script)])
    assert (
        outcome.returncode == 126 and outcome.spawn_error is not None and "script.sh" in outcome.spawn_error
    )


def test_deadline_already_passed_does_not_start_the_command(containment: str, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    outcome = run_command(f"touch {marker}", deadline=time.monotonic() - 1)
    assert outcome.timed_out and outcome.returncode is None and outcome.containment == "none"
    assert not marker.exists()


def test_cancel_already_set_does_not_start_the_command(containment: str, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    cancel = threading.Event()
    cancel.set()
    outcome = run_command(f"touch {marker}", cancel=cancel)
    assert outcome.cancelled and outcome.returncode is None and not marker.exists()


@pytest.mark.parametrize(
    "run, kwargs",
    [("", {}), ([], {}), (["echo"], {"grace_s": -1.0}), (["echo"], {"grace_s": math.nan}), (b"echo", {})],
)
def test_invalid_arguments_raise_process_error(run: object, kwargs: dict[str, float]) -> None:
    with pytest.raises(ProcessError):
        run_command(run, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "argv, env, named",
    [
        (["touch", "{marker}", "a\0b"], {}, "argument 2 of the command contains a NUL"),
        (["touch", "{marker}"], {"BAD": "x\0y"}, "the value of environment variable 'BAD' contains a NUL"),
        (["touch", "{marker}"], {"B\0D": "x"}, "environment variable name 'B\\x00D' contains a NUL"),
        (["touch", "{marker}", "\ud800"], {}, "argument 2 of the command cannot be encoded"),
        (["touch", "{marker}"], {"BAD": "\ud800"},
         "the value of environment variable 'BAD' cannot be encoded"),
        (["touch", "{marker}"], {"A=B": "x"}, "environment variable name 'A=B' is invalid"),
        (["touch", "{marker}"], {"": "x"}, "environment variable name '' is invalid"),
    ],
)
def test_a_string_execve_cannot_take_is_named_and_nothing_starts(
    tmp_path: Path, argv: list[str], env: dict[str, str], named: str
) -> None:
    marker = tmp_path / "started"
    with pytest.raises(ProcessError) as raised:
        run_command([arg.replace("{marker}", str(marker)) for arg in argv],
                    env={"PATH": os.environ["PATH"], **env})
    assert named in str(raised.value) and not marker.exists()


def test_strings_that_round_trip_through_the_os_are_passed_unchanged(tmp_path: Path) -> None:
    """A lone surrogate escape (an undecodable byte read from the OS) and non-ASCII text are valid."""
    out = tmp_path / "env"
    odd = os.fsdecode(b"caf\xe9")  # '\udce9': the byte 0xE9, as os.environ would hold it
    run_command(["sh", "-c", f"printf %s \"$ODD\" > {out}"], env={"PATH": os.environ["PATH"], "ODD": odd,
                                                                  "NAME_\u00e9": "\u00e9t\u00e9"})
    assert out.read_bytes() == b"caf\xe9"


def test_output_before_kill_is_kept_for_block_buffered_python_child(containment: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import sys, time, pathlib\n"
        "sys.stdout.write('written-before-kill\\n')  # no flush: a pipe would keep this in Python's buffer\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(3600)\n"
    )
    clock = GateClock(ready)
    # -E: ignore PYTHON* variables, so PYTHONUNBUFFERED cannot be what saves the output; only the PTY can.
    outcome = run_command(
        [sys.executable, "-E", "-c", code],
        env=_env_without_unbuffered(),
        deadline=clock.deadline,
        clock=clock,
        grace_s=0.2,
    )
    assert outcome.timed_out and outcome.survivors == 0
    assert outcome.stdout_tail == "written-before-kill"


def test_block_buffered_python_output_is_lost_through_a_pipe_control(
    containment: str, tmp_path: Path
) -> None:
    """The control for the test above: without the PTY the same child loses its output when killed."""
    ready = tmp_path / "ready"
    code = (
        "import sys, time, pathlib\n"
        "sys.stdout.write('x\\n')\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(3600)\n"
    )
    clock = GateClock(ready)
    outcome = run_command(
        [sys.executable, "-E", "-c", code],
        env=_env_without_unbuffered(),
        deadline=clock.deadline,
        clock=clock,
        grace_s=0.2,
        use_pty=False,
    )
    assert outcome.timed_out and outcome.stdout_tail == ""


def test_output_before_kill_is_kept_for_block_buffered_c_stdio_child(
    containment: str, tmp_path: Path
) -> None:
    awk = "mawk" if os.path.exists("/usr/bin/mawk") else "awk"
    fifo = tmp_path / "block"
    os.mkfifo(fifo)
    writer: list[int] = []

    def awk_is_blocked_on_the_fifo() -> bool:
        # Opening the FIFO for writing succeeds only once awk opened it for reading: after its print.
        if not writer:
            try:
                writer.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                return False
        return True

    clock = GateClock(awk_is_blocked_on_the_fifo)
    try:
        outcome = run_command(
            [awk, f'BEGIN {{ print "awk-before-kill"; getline line < "{fifo}" }}'],
            env=_env_without_unbuffered(),
            deadline=clock.deadline,
            clock=clock,
            grace_s=0.2,
        )
    finally:
        for fd in writer:
            os.close(fd)
    assert outcome.timed_out and outcome.survivors == 0
    assert outcome.stdout_tail == "awk-before-kill"
