"""A deployment run whose phase fans its commands out to a cluster (``runner: {dask: ADDRESS}``, then
``runner: {ray: ADDRESS}``), seen and cancelled in the Prefect UI in headless chromium, as a person would.

While the commands run on the cluster's workers (each blocks until the test releases it), the phase's
page lists them as Running task runs named as local ones (``work.a``) and its Logs tab shows the lines they
printed; once released, the run completes and each report row names the host and the worker (Dask) or node
(Ray) that ran it. A run whose remote command tree (a ``setsid`` member, a double-forked daemon, every member
ignoring SIGTERM) is running on a worker, cancelled with the page's Cancel button, ends CANCELLED with the row
the worker's ladder returned (SIGKILL after the grace), and no member of that tree is alive within the grace
plus a margin, counted by an independent /proc scan for the tree's pid directory in the members' command lines
(tests/process/helpers.py), not by grd's bookkeeping.

The Dask cluster is this module's (tests/fixtures/dask_cluster.py), the Ray cluster the session's, started
once per test run (tests/fixtures/ray_cluster.py); both run on the SQLite server only, so under
``--dist loadgroup`` they stay on that server's worker and the Ray cluster is started once.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser import screenshot, ui_page
from tests.e2e.helpers import read_json, run_logs, task_run_states, trigger, write_spec
from tests.fixtures.dask_cluster import DaskCluster
from tests.fixtures.prefect_server import PrefectServer, wait_until
from tests.fixtures.ray_cluster import RayCluster
from tests.process.helpers import marked, tree_argv

pytestmark = pytest.mark.e2e
DONE = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
GRACE_S = 2.0
SETTLE_S = 30.0  # bound on the wait for the last kill after the run is Cancelled (the ladder: grace, SIGKILL)


@dataclass(frozen=True)
class Cluster:
    """The cluster a phase fans out to: its spec key, its address, and its workers as rows name them."""

    engine: str
    address: str
    workers: frozenset[str]


@pytest.fixture(params=["dask", "ray"])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """The module's Dask cluster, then the session's Ray cluster. Asked for by name at run time, so the
    tests keep only their server's xdist group (tests/conftest.py groups tests that name ``ray_cluster``
    apart, which would start a second SQLite server on another worker)."""
    if request.param == "dask":
        dask: DaskCluster = request.getfixturevalue("dask_cluster")
        return Cluster("dask", dask.address, frozenset(dask.workers()))
    ray: RayCluster = request.getfixturevalue("ray_cluster")
    return Cluster("ray", ray.address, frozenset(ray.nodes))


def _subflow_id(server: PrefectServer, flow_run_id: str) -> str | None:
    """The id of the run's phase subflow, once it exists."""
    with server.http() as client:
        found = client.post("/flow_runs/filter", json={
            "flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
        found.raise_for_status()
    runs = found.json()
    return str(runs[0]["id"]) if runs else None


COMMANDS = ("a", "b", "c")


def test_the_phase_page_shows_remote_commands_as_task_runs_with_their_output_while_they_run(
    deployed: PrefectServer, cluster: Cluster, tmp_path: Path
) -> None:
    commands = "\n".join(
        f"              - name: {name}\n"
        f"                run: 'echo \"out-{name} first\"; while [ ! -e $D/release ]; do sleep 0.1; done; "
        f"echo \"out-{name} last\"'" for name in COMMANDS)
    spec = write_spec(tmp_path, f"""\
        name: e2e-remote
        timeout: 5m
        phases:
          - name: work
            max_parallel: {len(COMMANDS)}
            runner: {{{cluster.engine}: "{cluster.address}"}}
            commands:
""" + commands + "\n")
    report_path = tmp_path / "report.json"
    flow_run_id = trigger(deployed, "grd-benchmark/grd-benchmark", {
        "spec_path": str(spec), "store": str(tmp_path / "store"), "report_path": str(report_path)})

    def printed_first() -> bool:
        lines = "\n".join(run_logs(deployed, flow_run_id))
        state = deployed.flow_run(flow_run_id)["state"]
        assert state["type"] not in DONE, f"the run ended before its commands were released: {state}\n{lines}"
        return all(f"work.{name} | out-{name} first" in lines for name in COMMANDS)

    wait_until(printed_first, "every remote command's first line in the run's logs", 180)
    phase_id = wait_until(lambda: _subflow_id(deployed, flow_run_id), "the phase's subflow run", 30)
    with ui_page(f"{deployed.ui_url}/runs/flow-run/{phase_id}") as page:
        p: Any = page
        # While every command still runs (none can end before the test releases them):
        for name in COMMANDS:
            p.get_by_text(f"work.{name} | out-{name} first").first.wait_for()
        screenshot(p, f"remote-{cluster.engine}-logs")
        p.get_by_text("Task Runs", exact=True).first.click()
        p.get_by_placeholder("Search by run name").wait_for()  # the task runs' list, not the logs
        p.get_by_text(f"({len(COMMANDS)} Running)").wait_for()
        for name in COMMANDS:
            p.get_by_role("link", name=f"work.{name}", exact=True).wait_for()
        screenshot(p, f"remote-{cluster.engine}-task-runs")
        assert not (tmp_path / "release").exists()
        assert deployed.flow_run(flow_run_id)["state"]["type"] == "RUNNING"
        (tmp_path / "release").touch()
        run = deployed.wait_for_state(flow_run_id, DONE)
        p.reload()
        p.get_by_text("Completed").first.wait_for()
        screenshot(p, f"remote-{cluster.engine}-completed")

    assert run["state"]["type"] == "COMPLETED", run["state"]
    report = read_json(report_path)
    rows = report["phases"][0]["commands"]
    assert [row["name"] for row in rows] == list(COMMANDS)
    assert all(row["status"] == "COMPLETED" for row in rows), rows
    assert all(row["host"] == socket.gethostname() and row["worker"] in cluster.workers for row in rows), rows
    logs = "\n".join(run_logs(deployed, flow_run_id))
    assert all(f"work.{name} | out-{name} last" in logs for name in COMMANDS), logs


def test_cancel_clicked_in_the_ui_stops_a_remote_tree_with_no_survivors(
    deployed: PrefectServer, cluster: Cluster, tmp_path: Path
) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    argv = ", ".join(f"'{item}'" for item in tree_argv(pid_dir, "ignore_term", "setsid", "child", "daemon"))
    spec = write_spec(tmp_path, f"""\
        name: e2e-remote-cancel
        timeout: 5m
        grace: {GRACE_S:g}s
        phases:
          - name: work
            runner: {{{cluster.engine}: "{cluster.address}"}}
            commands:
              - name: tree
                run: [{argv}]
        """)
    report_path = tmp_path / "report.json"
    flow_run_id = trigger(deployed, "grd-benchmark/grd-benchmark", {
        "spec_path": str(spec), "store": str(tmp_path / "store"), "report_path": str(report_path)})
    wait_until((pid_dir / "ready").exists, "the remote tree to say it is up", 180)
    members = marked(str(pid_dir))
    assert len(members) >= 5, members  # main, setsid, child, grandchild, daemon

    with ui_page(f"{deployed.ui_url}/runs/flow-run/{flow_run_id}") as page:
        p: Any = page
        p.get_by_role("button", name="Cancel").first.click()
        screenshot(p, f"remote-{cluster.engine}-cancel-confirm")
        p.get_by_role("dialog").get_by_role("button", name="Confirm").click()
        run = deployed.wait_for_state(flow_run_id, DONE, timeout_s=120)
        p.reload()
        p.get_by_text("Cancelled").first.wait_for()
        screenshot(p, f"remote-{cluster.engine}-cancelled")
    assert run["state"]["type"] == "CANCELLED", run["state"]

    # A bounded settle for the last kill (its grace, then SIGKILL); every member ignores SIGTERM.
    try:
        wait_until(lambda: not marked(str(pid_dir)), "every member of the remote tree to be gone",
                   GRACE_S + SETTLE_S)
    except AssertionError:
        raise AssertionError(f"survivors of the cancelled remote tree: {marked(str(pid_dir))}\n"
                             f"{deployed.logs_tail()}") from None
    assert report_path.exists(), f"the cancelled run wrote no report\n{deployed.logs_tail()}"
    report = read_json(report_path)
    (row,) = report["phases"][0]["commands"]
    assert report["status"] == "CANCELLED" and row["status"] == "CANCELLED", report
    assert row["returncode"] == -9 and row["worker"] in cluster.workers, row  # SIGKILLed on the worker
    assert task_run_states(deployed, flow_run_id).get("work.tree") == "CANCELLED"
