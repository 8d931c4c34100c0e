"""Cancelling a deployment run from the API (as the UI's "Cancel" does) leaves no process of it alive.

The command spawns a tree that tries every way out: a plain grandchild, a ``setsid`` escape into its own
session and a double-forked daemon (re-parented away from the command), each saying it is up in a file and
carrying the test's pid directory in its command line. After the cancel, no process with that marker is left
(a /proc scan; inside grd's PID namespace their own pids are not the host's) and the flow-run processes,
recorded with their start times before, are gone too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.helpers import (
    cancel_like_the_ui,
    flow_run_logs,
    flow_run_pids,
    read_json,
    start_time,
    still_running,
    task_run_states,
    trigger,
    write_spec,
)
from tests.fixtures.prefect_server import PrefectServer, wait_until
from tests.process.helpers import marked

pytestmark = pytest.mark.e2e
NEVER = ("Traceback", "object at 0x", "NoneType: None", "Unexpected result", "unexpected exception",
         "Running()")

# $1 is the directory the members say they are up in; every member's command line carries it.
TREE = """\
#!/bin/sh
D=$1
sh -c 'echo $$ > "$0/grandchild.pid"; while :; do sleep 1; done' "$D" &
setsid sh -c 'echo $$ > "$0/setsid.pid"; while :; do sleep 1; done' "$D" &
sh -c 'sh -c '"'"'trap "" TERM; echo $$ > "$0/daemon.pid"; while :; do sleep 1; done'"'"' "$0" & exit 0' "$D"
echo $$ > "$D/command.pid"
wait
"""
ROLES = ("command", "grandchild", "setsid", "daemon")

SPEC = """\
    name: e2e-cancel
    timeout: 5m
    grace: 2s
    phases:
      - name: work
        commands:
          - name: tree
            run: sh $D/tree.sh $D/pids
    """


def test_cancel_from_the_api_leaves_no_process_of_the_run_alive(
    deployed_on: PrefectServer, tmp_path: Path
) -> None:
    deployed = deployed_on
    (tmp_path / "tree.sh").write_text(TREE)
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    spec = write_spec(tmp_path, SPEC)
    report_path = tmp_path / "report.json"
    flow_run_id = trigger(deployed, "grd-benchmark/grd-benchmark", {
        "spec_path": str(spec), "store": str(tmp_path / "store"), "report_path": str(report_path)})

    def tree_is_up() -> bool:
        return all((pids_dir / f"{role}.pid").exists() for role in ROLES)

    wait_until(tree_is_up, "the command's tree to say it is up", 150)
    assert len(marked(str(pids_dir))) >= len(ROLES), marked(str(pids_dir))
    stamps: dict[str, tuple[int, int]] = {}
    engine = {pid: start_time(pid) for pid in flow_run_pids(flow_run_id)}
    assert engine, f"no process carries PREFECT__FLOW_RUN_ID={flow_run_id}"
    for pid, started in engine.items():
        if started is not None:
            stamps[f"flow-run process {pid}"] = (pid, started)

    cancel_like_the_ui(deployed, flow_run_id)
    run = deployed.wait_for_state(flow_run_id, {"CANCELLED", "COMPLETED", "FAILED", "CRASHED"}, timeout_s=120)
    assert run["state"]["type"] == "CANCELLED", run["state"]

    def survivors() -> list[str]:
        tree = [f"tree member (pid {pid})" for pid in marked(str(pids_dir))]
        return tree + [f"{role} (pid {pid})" for role, (pid, started) in stamps.items()
                       if still_running(pid, started)]

    # The Cancelled state may be committed a moment before the last kill lands; allow a bounded settle.
    try:
        wait_until(lambda: not survivors(), "every process of the cancelled run to be gone", 20)
    except AssertionError:
        alive = survivors()
        raise AssertionError(f"survivors of the cancelled run: {alive}\n{deployed.logs_tail()}") from None
    assert task_run_states(deployed, flow_run_id).get("work.tree") == "CANCELLED"
    report = read_json(report_path)
    assert report["status"] == "CANCELLED", report
    assert report["phases"][0]["commands"][0]["status"] == "CANCELLED", report


def test_cancel_of_a_training_run_commits_a_checkpoint_and_ends_cancelled(
    deployed: PrefectServer, tmp_path: Path
) -> None:
    """The worker's SIGTERM reaches the training loop, which saves at the next step and stops; no retry."""
    from grd_blocks.checkpoint import CheckpointEngine

    store = tmp_path / "store"
    config = {"epochs": 30, "batch_size": 16, "samples": 256, "step_delay_s": 0.2}
    flow_run_id = trigger(deployed, "grd-train/grd-train", {"config": config, "store": str(store)})
    engine = CheckpointEngine(str(store))
    before = wait_until(lambda: engine.latest_checkpoint(flow_run_id), "a first checkpoint", 150)
    cancel_like_the_ui(deployed, flow_run_id)
    run = deployed.wait_for_state(flow_run_id, {"CANCELLED", "COMPLETED", "FAILED", "CRASHED"}, timeout_s=120)
    assert run["state"]["type"] == "CANCELLED", run["state"]
    stop = engine.run(flow_run_id).child("partial").latest()  # the checkpoint saved at the stop itself
    assert stop is not None and stop.index > before.index * 16, (before, stop)  # 16 steps an epoch
    # The flow returns its Cancelled state before its process has flushed logs and exited: a bounded settle.
    wait_until(lambda: not flow_run_pids(flow_run_id), "the cancelled run's processes to exit", 30)
    run_count = deployed.flow_run(flow_run_id)["run_count"]
    assert run_count == 1, f"a cancelled run was retried: run_count {run_count}"

    def ended() -> list[str]:  # logs reach the API in batches; its process, gone now, sent its last ones
        lines = flow_run_logs(deployed, flow_run_id)
        return lines if any("Finished in state Cancelled" in line for line in lines) else []

    # what the run's page shows: no traceback, no repr
    logs = wait_until(ended, "the cancelled run's last log lines to reach the API", 60)
    shown = [line for line in logs if any(never in line for never in NEVER)]
    assert not shown, shown
