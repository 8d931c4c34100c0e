"""`grd run` with GRD_RAY_ADDRESS keeps its stop path when it is signalled: a SIGTERM to `grd run` while a
command's tree runs on a real Ray cluster (127.0.0.1) takes that tree down its ladder on the node (SIGTERM,
the command's grace, SIGKILL), writes the report with the row the node returned and exits 143, however long
the grace is. Ray's C++ failure signal handler, had grd let it install itself in the driver, printed a crash
report for that SIGTERM and aborted the process ~3 s later (absl's alarm): a grace longer than that lost the
report and the cleanups. Survivors are counted by an independent /proc scan."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.cli.helpers import grd_env
from tests.fixtures.ray_cluster import RayCluster
from tests.process.helpers import TREE_CHILD, marked, wait_for

GRACE_S = 5.0  # longer than the ~3 s after which Ray's handler aborted a signalled driver


def test_sigterm_to_grd_run_keeps_its_stop_path_past_rays_abort_the_report_written_and_exit_143(
    ray_cluster: RayCluster, api_url: str, tmp_path: Path
) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    items = [sys.executable, TREE_CHILD, str(pid_dir), "ignore_term", "setsid"]
    argv = ", ".join(f"'{item}'" for item in items)
    (tmp_path / "spec.yaml").write_text(f"""name: remote
phases:
  - name: p
    commands:
      - {{name: tree, run: [{argv}], grace: {GRACE_S:g}s}}
cleanup: {{name: after, run: "touch {tmp_path}/cleaned"}}
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "grd_blocks.cli", "run", "spec.yaml", "--store", "./ck",
         "--run-key", "ray-term"],
        cwd=tmp_path, env=grd_env(api_url, GRD_RAY_ADDRESS=ray_cluster.address),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert wait_for((pid_dir / "ready").exists, 120), "the remote tree never started"
        assert marked(str(pid_dir)) != []
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
    assert "SIGTERM received" not in stderr, stderr[-3000:]  # Ray's crash report of the signal
    assert marked(str(pid_dir)) == []  # gone before grd exited: it waited for the node's ladder
    report = json.loads((tmp_path / "reports" / "ray-term" / "report.json").read_text())
    (row,) = report["phases"][0]["commands"]
    assert row["status"] == "CANCELLED" and row["returncode"] == -9, row  # SIGKILLed after the grace
    assert row["worker"] in ray_cluster.nodes and row["elapsed_s"] >= GRACE_S, row
    assert report["cleanup"]["status"] == "COMPLETED" and (tmp_path / "cleaned").exists(), report["cleanup"]
