"""Pre-started command shells: a command started in one sees exactly what a freshly spawned one sees, an
unused spare goes away with grd, and a short command's output is read without a reader thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from grd_blocks.errors import ProcessError
from grd_blocks.process import prestart, run_command
from grd_blocks.process.output import OutputCapture
from grd_blocks.process.tree import FORCE_FALLBACK_ENV
from tests.process.helpers import cgroup_available, running, wait_for

_PROBE = "env | sort; pwd; ls /proc/self/fd | wc -l"


@pytest.fixture
def cgroup_only(monkeypatch: pytest.MonkeyPatch) -> str:
    """Spares serve the cgroup containment only (the subreaper fallback always spawns)."""
    monkeypatch.delenv(FORCE_FALLBACK_ENV, raising=False)
    if not cgroup_available():
        pytest.skip("no writable cgroup2 hierarchy here: spares are never used on this host")
    return "cgroup"


def _ready_spare() -> None:
    """Ask for spares and wait until one is ready, so the next run_command takes one."""
    prestart.refill()
    assert wait_for(lambda: bool(prestart._POOL._spares), 10.0)


_ENV = {"PATH": "/usr/bin:/bin", "PWD": "/tmp", "OLDPWD": "/x", "Q": "a'b\nc"}


@pytest.mark.parametrize("cwd", [None, "/tmp", "."])
@pytest.mark.parametrize("env", [None, _ENV])
def test_prestarted_command_sees_the_same_environment_cwd_and_fds_as_a_fresh_one(
    cgroup_only: str, cwd: str | None, env: dict[str, str] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ready_spare()
    fast = run_command(["sh", "-c", _PROBE], cwd=cwd, env=env)
    monkeypatch.setattr(prestart, "take", lambda: None)
    fresh = run_command(["sh", "-c", _PROBE], cwd=cwd, env=env)
    assert fast.returncode == fresh.returncode == 0
    assert fast.stdout_tail == fresh.stdout_tail


def test_shell_special_variables_reach_the_command_as_given(
    cgroup_only: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"PATH": "/usr/bin:/bin", "IFS": "x", "PPID": "7", "ENV": "/nonexistent", "Q": "a b$HOME`id`"}
    _ready_spare()
    fast = run_command(["env"], env=env)
    monkeypatch.setattr(prestart, "take", lambda: None)
    fresh = run_command(["env"], env=env)
    assert fast.returncode == fresh.returncode == 0
    assert sorted(fast.stdout_tail.splitlines()) == sorted(fresh.stdout_tail.splitlines())
    assert "Q=a b$HOME`id`" in fast.stdout_tail.splitlines() and "IFS=x" not in fast.stdout_tail


def test_a_script_cut_short_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = prestart.script(
        ["touch", str(marker)], shell=False, env={"PATH": "/usr/bin:/bin"}, cwd="/", spare_cwd="/"
    )
    assert text is not None
    for cut in (len(text) - 2, text.index("touch") + 3):
        done = subprocess.run(["/bin/sh", "-c", ". /dev/stdin"], input=text[:cut].encode(), check=False)
        assert done.returncode != 0 and not marker.exists()
    assert subprocess.run(["/bin/sh", "-c", ". /dev/stdin"], input=text.encode(), check=False).returncode == 0
    assert marker.exists()


def test_prestarted_shell_command_keeps_its_dollar_zero_and_exit_code(cgroup_only: str) -> None:
    _ready_spare()
    outcome = run_command("echo $0 $#; read x || echo stdin-empty; exit 3")
    assert outcome.returncode == 3 and outcome.stdout_tail == "/bin/sh 0\nstdin-empty"


def test_environment_names_a_shell_cannot_export_start_the_usual_way(
    cgroup_only: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ready_spare()
    env = {"PATH": os.environ["PATH"], "BASH_FUNC_f%%": "() { :; }"}
    assert prestart.script(["env"], shell=False, env=env, cwd="/", spare_cwd="/") is None
    usual = run_command(["env"], env=env)
    monkeypatch.setattr(prestart, "take", lambda: None)
    assert usual.returncode == 0 and usual.stdout_tail == run_command(["env"], env=env).stdout_tail


def test_prestarted_command_is_killed_on_its_deadline(cgroup_only: str) -> None:
    _ready_spare()
    outcome = run_command(["sleep", "30"], deadline=time.monotonic() + 0.3, grace_s=0.1)
    assert outcome.timed_out and outcome.survivors == 0 and not running(outcome.pid or 0)


def test_unused_spare_exits_when_its_owner_dies(cgroup_only: str, tmp_path: Path) -> None:
    code = (
        "import os, sys, time; sys.path.insert(0, sys.argv[1])\n"
        "from grd_blocks.process import prestart\n"
        "prestart.refill()\n"
        "while not prestart._POOL._spares: time.sleep(0.01)\n"
        "print(prestart._POOL._spares[0].proc.pid, flush=True); time.sleep(3600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code, str(Path.cwd())], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        spare_pid = int(owner.stdout.readline())
        assert running(spare_pid)
    finally:
        owner.kill()
        owner.wait()
    assert wait_for(lambda: not running(spare_pid), 10.0)


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


@pytest.mark.parametrize("spare_ready", [True, False])
def test_an_unwritable_log_path_is_a_clear_error_on_either_start(
    cgroup_only: str, spare_ready: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log directory should be")
    if spare_ready:
        _ready_spare()
    else:
        monkeypatch.setattr(prestart, "take", lambda: None)
    with pytest.raises(ProcessError, match=r"cannot open the log file .*not-a-dir.*pass a writable log_path"):
        run_command(["true"], log_path=blocker / "c.log")
    assert run_command(["true"], log_path=tmp_path / "ok.log").returncode == 0  # nothing was left broken
