"""`grd run` stopped by Ctrl-C or SIGTERM mid-command exits 130 / 143, its report's ``exit_code`` says the
same, and it prints one line (no traceback) naming the report and how to resume.

The child gets SIGINT's default disposition: a shell without job control starts background jobs with SIGINT
ignored, and a program started that way keeps ignoring Ctrl-C, grd included (the shell's intent).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import grd_env

SPEC = """name: sig
phases:
  - name: p
    commands:
      - {name: a, run: echo done-a}
      - {name: b, run: "echo started-b; sleep 120"}
"""


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[str]) -> Iterator[None]:
    """Whatever the test found, grd is not left running (resumed first, in case the test had stopped it)."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"]
)
def test_a_signal_mid_command_exits_128_plus_it_and_the_report_says_the_same(
    tmp_path: Path, api_url: str, sig: signal.Signals, code: int
) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    key = f"sig-{sig.name.lower()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "grd_blocks.cli", "run", "spec.yaml", "--store", "./ck", "--run-key", key],
        cwd=tmp_path, env=grd_env(api_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )
    with _reaped(proc):
        assert proc.stderr is not None
        seen: list[str] = []
        for line in proc.stderr:  # the command's output is logged here as it is printed
            seen.append(line)
            if "p.b | started-b" in line:
                break
        else:
            pytest.fail("grd run ended before command b started:\n" + "".join(seen))
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "Running()" not in stderr, stderr
    assert "Finished in state Cancelled('benchmark sig: stopped by " in stderr, stderr  # the run's end, named
    kept = "1 of 2 command(s) completed and are kept; a Retry of this flow run, or a new run with resume_from"
    assert kept in stderr, stderr
    ours = [line for line in stderr.splitlines() if line.startswith("grd run:")]
    assert len(ours) == 1 and f"exit code {code}" in ours[0] and f"--resume {key}" in ours[0], stderr
    report = json.loads((tmp_path / "reports" / key / "report.json").read_text())
    assert report["exit_code"] == code and report["status"] == "CANCELLED"
    rows = {row["name"]: row["status"] for row in report["phases"][0]["commands"]}
    assert rows == {"a": "COMPLETED", "b": "CANCELLED"}


TWICE_SPEC = SPEC.replace("name: sig", "name: twice") + (
    '    cleanup: {name: tidy, run: "echo tidying; sleep 20", timeout: 30s}\n')  # SPEC's phase, and a cleanup
LATE_SPEC = """name: late
phases:
  - name: p
    commands:
      - {name: slow, run: "sleep 30", timeout: 1s, grace: 1s}
"""


def _grd(tmp_path: Path, spec: str, key: str, mark: str) -> subprocess.Popen[str]:
    (tmp_path / "spec.yaml").write_text(spec)
    env = grd_env(None, GRD_TEST_TRIAL=mark, PYTHONUNBUFFERED="1")  # the ephemeral API: grd's own server
    return subprocess.Popen(
        [sys.executable, "-m", "grd_blocks.cli", "run", "spec.yaml", "--store", "./ck", "--run-key", key],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_default_sigint,
    )


def _read_until(proc: subprocess.Popen[str], words: str, seen: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if words in line:
            return
    pytest.fail(f"grd run ended before {words!r}:\n" + "".join(seen))


def _nothing_left(mark: str) -> list[int]:
    """Every process grd started carries the mark in its environment: none may be left once the guardian's
    grace has passed (an independent /proc scan)."""
    from grd_blocks.prefect_edge.ephemeral import GUARD_GRACE_S
    from tests.fixtures.prefect_server import pids_with_env
    from tests.process.helpers import wait_for

    wait_for(lambda: not pids_with_env(f"GRD_TEST_TRIAL={mark}"), GUARD_GRACE_S + 20)
    left = pids_with_env(f"GRD_TEST_TRIAL={mark}")
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM)],
    ids=["ctrl-c-twice", "term-then-ctrl-c", "term-twice"],
)
def test_a_second_signal_during_the_stop_exits_with_the_reports_code_and_leaves_nothing_running(
    tmp_path: Path, first: signal.Signals, second: signal.Signals
) -> None:
    """The first signal stops the command and runs the phase's cleanup; the second lands in that cleanup.
    The exit status is the report's exit_code (130 or 143), and no process grd started
    (the API server, the guardian, keepers, commands) outlives it: 13 of 21 double signals used to leave
    the API server running, started anew by a log line after the first one had stopped."""
    mark = uuid.uuid4().hex
    proc = _grd(tmp_path, TWICE_SPEC, f"twice-{first.name}-{second.name}".lower(), mark)
    seen: list[str] = []
    with _reaped(proc):
        _read_until(proc, "p.b | started-b", seen)
        proc.send_signal(first)
        _read_until(proc, "p.tidy | tidying", seen)
        proc.send_signal(second)
        rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    report = json.loads(next((tmp_path / "reports").glob("*/report.json")).read_text())
    # the report is written by the stop that reaches the flow: the first signal's, or the second's when that
    # one lands while the phase is still stopping (the phase's cleanup runs before the flow hears of either)
    assert report["exit_code"] in (128 + first, 128 + second) and report["status"] == "CANCELLED", output
    assert proc.returncode == report["exit_code"], output
    assert _nothing_left(mark) == [], output


def test_ctrl_c_twice_after_the_report_is_written_exits_with_the_reports_code(tmp_path: Path) -> None:
    """The run ended TIMEOUT (124) and its report is written: a Ctrl-C pressed twice while grd prints its
    summary and shuts Prefect down ends it at once, with 124 (it used to die by SIGINT, the report saying
    124), and leaves nothing running."""
    mark = uuid.uuid4().hex
    proc = _grd(tmp_path, LATE_SPEC, "late", mark)
    seen: list[str] = []
    with _reaped(proc):
        _read_until(proc, "report: ", seen)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    report = json.loads((tmp_path / "reports" / "late" / "report.json").read_text())
    assert report["exit_code"] == 124 and proc.returncode == 124, output
    assert _nothing_left(mark) == [], output


STOPPED_SPEC = """name: stopped
phases:
  - name: p
    commands:
      - name: slow
        run: "echo started-slow; exec python3 -c 'import time; time.sleep(60)' MARK"
        timeout: 5s
        grace: 1s
"""


def test_grd_run_stopped_past_a_deadline_has_it_kept_by_the_keeper_and_reported(tmp_path: Path) -> None:
    """Ctrl-Z (SIGSTOP) of `grd run` while its command runs: the command is still stopped at its deadline
    (it used to run on until grd was resumed: SIGTERM at 16.1 s on a 4 s budget). The test keeps grd stopped
    until an independent /proc scan finds the command gone, then resumes it: the report says TIMEOUT,
    ``stopped_by`` "keeper", and the exit code is the report's (124)."""
    from tests.process.helpers import marked, wait_for

    mark = uuid.uuid4().hex
    proc = _grd(tmp_path, STOPPED_SPEC.replace("MARK", mark), "stopped", mark)
    seen: list[str] = []
    with _reaped(proc):
        _read_until(proc, "p.slow | started-slow", seen)
        proc.send_signal(signal.SIGSTOP)
        assert marked(mark), "the command is not running"
        assert wait_for(lambda: marked(mark) == [], 5.0 + 1.0 + 1.0 + 30.0), "it outlived its deadline"
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state == "T", "grd ran again before the command ended: the keeper's act is not shown"
        proc.send_signal(signal.SIGCONT)
        rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    report = json.loads((tmp_path / "reports" / "stopped" / "report.json").read_text())
    (row,) = report["phases"][0]["commands"]
    assert row["status"] == "TIMEOUT" and row["timeout"]["stopped_by"] == "keeper", output
    assert report["exit_code"] == 124 and proc.returncode == 124, output
    assert "its keeper ran the ladder" in output, output
    assert _nothing_left(mark) == [], output
