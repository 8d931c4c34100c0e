"""`grd run` with GRD_RAY_ADDRESS keeps its stop path when it is signalled: a SIGTERM to `grd run` while a
command's tree runs on a real Ray cluster (127.0.0.1) takes that tree down its ladder on the node (SIGTERM,
the command's grace, SIGKILL), writes the report with the row the node returned and exits 143, however long
the grace is. Ray's C++ failure signal handler, had grd let it install itself in the driver, printed a crash
report for that SIGTERM and aborted the process ~3 s later (absl's alarm): a grace longer than that lost the
report and the cleanups. Survivors are counted by an independent /proc scan."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.cli.helpers import sigtermed_grd_run
from tests.fixtures.ray_cluster import RayCluster
from tests.process.helpers import TREE_CHILD, marked

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
    returncode, stderr = sigtermed_grd_run(tmp_path, "ray-term", pid_dir / "ready", api_url,
                                           GRD_RAY_ADDRESS=ray_cluster.address)
    assert returncode == 143, (returncode, stderr[-3000:])
    assert "SIGTERM received" not in stderr, stderr[-3000:]  # Ray's crash report of the signal
    assert marked(str(pid_dir)) == []  # gone before grd exited: it waited for the node's ladder
    report = json.loads((tmp_path / "reports" / "ray-term" / "report.json").read_text())
    (row,) = report["phases"][0]["commands"]
    assert row["status"] == "CANCELLED" and row["returncode"] == -9, row  # SIGKILLed after the grace
    assert row["worker"] in ray_cluster.nodes and row["elapsed_s"] >= GRACE_S, row
    assert report["cleanup"]["status"] == "COMPLETED" and (tmp_path / "cleaned").exists(), report["cleanup"]
