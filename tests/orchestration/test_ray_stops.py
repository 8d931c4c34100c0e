"""A lost Ray worker is a retry, not a hang, and a lost driver leaves nothing running (a real Ray cluster on
127.0.0.1, real SIGKILLs): the Ray worker process running a command, found from the command's own process by
its parent chain in /proc, SIGKILLed mid-command leaves nothing of the command running (the guardian on its
node runs the ladder) and the command completes on another try, its row naming the lost one; the driver
process SIGKILLed mid-command leaves nothing of the remote tree once its grace and the documented margin
(``ray_worker.DRIVER_GONE_S``) have passed. Survivors are counted by an independent /proc scan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from grd_blocks.orchestration.ray_worker import DRIVER_GONE_S
from grd_blocks.orchestration.status import Status
from tests.fixtures.ray_cluster import RayCluster
from tests.orchestration.fanout import STOP_WAIT_S, run_in_background, tree, tree_on_first_try
from tests.process.helpers import marked, wait_for

GRACE_S = 1.0


def test_a_ray_worker_killed_mid_command_leaves_nothing_running_and_the_command_completes_on_another_try(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """The first try builds a tree (a TERM-ignoring member and a setsid one); the Ray worker process that
    runs it is SIGKILLed; the tree goes down the ladder on its own (the guardian and keepers on the node saw
    the worker die) and the second try finds the first's mark and completes."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    shell = tree_on_first_try(tmp_path, pid_dir)
    spec = f"""
name: lost
phases:
  - name: p
    timeout: 300s
    runner: {{ray: "{ray_cluster.address}", attempts: 2}}
    commands:
      - {{name: c, run: '{shell}', grace: {GRACE_S}s}}
"""
    background = run_in_background(tmp_path, spec, key="ray-lost-1")
    assert wait_for((pid_dir / "ready").exists, STOP_WAIT_S * 4), "the first try's tree never started"
    worker = ray_cluster.worker_of(marked(str(pid_dir)))
    os.kill(worker, signal.SIGKILL)
    row = background.row()
    assert row.status is Status.COMPLETED, (row.status, row.reason, row.note)
    assert row.note is not None and "its Ray worker was lost mid-command" in row.note, row.note
    assert "second try" in row.stdout_tail and row.worker in ray_cluster.nodes
    assert wait_for(lambda: marked(str(pid_dir)) == [], STOP_WAIT_S), marked(str(pid_dir))
    log = Path(row.log_path or "").read_text()
    assert "[grd] its Ray worker was lost mid-command" in log and log.endswith("second try\n")


def test_a_sigkilled_driver_leaves_nothing_of_the_remote_tree_once_its_grace_and_margin_have_passed(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """The engine runs in a process of its own (as in `grd run`), which is SIGKILLed while its command's
    tree (TERM-ignoring, setsid, daemon members; no deadline: it would run forever) runs on a node: nothing of
    grd is left to send a stop, so the hub it owned goes with it, the task's watcher finds it gone and the
    ladder runs there. /proc holds nothing of the tree within its grace plus ``DRIVER_GONE_S``."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    (tmp_path / "spec.yaml").write_text(f"""name: orphan
phases:
  - name: p
    runner: {{ray: "{ray_cluster.address}"}}
    commands:
      - {{name: tree, run: [{tree(pid_dir, "ignore_term", "setsid", "daemon")}], grace: {GRACE_S}s}}
""")
    script = ("import sys; from pathlib import Path; from tests.orchestration.fanout import run_spec; "
              "run_spec(Path(sys.argv[1]), Path(sys.argv[1], 'spec.yaml').read_text(), key='ray-orphan-1')")
    driver = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=Path(__file__).parents[2],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for((pid_dir / "ready").exists, STOP_WAIT_S * 4), "the remote tree never started"
        assert marked(str(pid_dir)) != []
        driver.kill()
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert wait_for(lambda: marked(str(pid_dir)) == [], GRACE_S + DRIVER_GONE_S), marked(str(pid_dir))
