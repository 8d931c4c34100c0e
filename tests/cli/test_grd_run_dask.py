"""`grd run` with GRD_DASK_SCHEDULER: its commands run on a real Dask cluster; a SIGTERM to `grd run` stops a
command running on a worker (its whole tree: a setsid member and SIGTERM-ignoring ones) before `grd run`
exits 143, and a SIGKILLed `grd run` leaves nothing of it once its grace has passed; an independent /proc
scan counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.helpers import grd_env, sigtermed_grd_run
from tests.fixtures.dask_cluster import DaskCluster
from tests.process.helpers import TREE_CHILD, marked, wait_for


def _argv(pid_dir: Path) -> str:
    items = [sys.executable, TREE_CHILD, str(pid_dir), "ignore_term", "setsid"]
    return ", ".join(f"'{item}'" for item in items)


def test_sigterm_to_grd_run_stops_the_remote_tree_before_grd_exits(
    dask_cluster: DaskCluster, api_url: str, tmp_path: Path
) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    argv = _argv(pid_dir)
    (tmp_path / "spec.yaml").write_text(f"""name: remote
phases:
  - name: p
    commands:
      - {{name: a, run: "echo done-a"}}
      - {{name: tree, run: [{argv}], grace: 0.5s}}
""")
    returncode, stderr = sigtermed_grd_run(tmp_path, "rem", pid_dir / "ready", api_url,
                                           GRD_DASK_SCHEDULER=dask_cluster.address)
    assert returncode == 143, stderr
    assert marked(str(pid_dir)) == []  # gone before grd exited: it waited for the worker's ladder
    report = json.loads((tmp_path / "reports" / "rem" / "report.json").read_text())
    rows = {row["name"]: row for row in report["phases"][0]["commands"]}
    assert rows["a"]["status"] == "COMPLETED" and rows["a"]["worker"] in dask_cluster.workers()
    assert rows["tree"]["status"] == "CANCELLED", rows["tree"]


def test_a_sigkilled_grd_run_leaves_nothing_of_a_remote_tree_once_its_grace_has_passed(
    dask_cluster: DaskCluster, api_url: str, tmp_path: Path
) -> None:
    """Nothing of grd is left to send a stop: the scheduler releases the dead client's task and the
    worker's watcher turns that into the command's cancel (with no deadline it would run forever)."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    argv = _argv(pid_dir)
    (tmp_path / "spec.yaml").write_text(f"""name: orphan
phases:
  - name: p
    commands:
      - {{name: tree, run: [{argv}], grace: 0.5s}}
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "grd_blocks.cli", "run", "spec.yaml", "--store", "./ck", "--run-key", "orph"],
        cwd=tmp_path, env=grd_env(api_url, GRD_DASK_SCHEDULER=dask_cluster.address),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for((pid_dir / "ready").exists, 120), "the remote tree never started"
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_for(lambda: marked(str(pid_dir)) == [], 30), marked(str(pid_dir))
