"""A remote command's scratch folder never outlives its worker on the worker's machine: a worker SIGKILLed
mid-command leaves a folder that the next remote command there removes, while a running command's folder and
a kept log stay (scratch.py). The owners are real processes; SIGKILL is the worker's death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from grd_blocks.orchestration.scratch import Scratch, sweep

_OWNER = """
import sys
from pathlib import Path
from grd_blocks.orchestration.scratch import Scratch
scratch = Scratch.make(Path(sys.argv[1]))
(scratch.path / "attempt.log").write_text("output")
print(scratch.path, flush=True)
sys.stdin.read()  # holds the folder (a command running) until the test closes stdin or kills it
"""


def _owner(root: Path) -> tuple[subprocess.Popen[str], Path]:
    child = subprocess.Popen([sys.executable, "-c", _OWNER, str(root)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout is not None
    return child, Path(child.stdout.readline().strip())


def test_a_worker_killed_mid_command_leaves_a_folder_the_next_command_removes(tmp_path: Path) -> None:
    killed, dead_folder = _owner(tmp_path)
    running, live_folder = _owner(tmp_path)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        assert (dead_folder / "attempt.log").is_file()  # what a killed worker leaves
        following = Scratch.make(tmp_path)  # the next remote command on this machine
        try:
            assert not dead_folder.exists()
            assert (live_folder / "attempt.log").is_file()  # a command still running keeps its folder
        finally:
            following.close()
        assert not following.path.exists()
    finally:
        assert running.stdin is not None
        running.stdin.close()
        running.wait(timeout=30)
    assert sweep(tmp_path) == [live_folder]  # its owner is gone now, however it ended


def test_a_kept_log_is_never_swept(tmp_path: Path) -> None:
    kept = Scratch.make(tmp_path)
    (kept.path / "attempt.log").write_text("a log too long to send back, named in the row")
    kept.close(keep=True)
    assert sweep(tmp_path) == []
    assert (kept.path / "attempt.log").read_text().startswith("a log too long")
