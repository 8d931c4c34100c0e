"""A machine lost mid-training: the run is marked Crashed; its retry, on another worker, resumes from S3.

Two process workers share a pool (each its own process group, both with PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30)
and a CheckpointStore block pointing at a SeaweedFS bucket. Once the grd-train run has committed a checkpoint,
the worker running it and the run's processes are frozen and SIGKILLed together, so nothing reports anything.
The documented zombie automation (docs/zombie-flow-runs.automation.yaml, its window shortened to 45 s and
scoped to this test's deployment) must then mark the run Crashed by itself. "Retry" (AwaitingRetry, as the UI
does) is picked up by the surviving worker, which resumes from the S3 checkpoint (epoch > 0) and finishes
with weights bit-identical to an uninterrupted run computed in-process.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.training.config import TrainConfig
from grd_blocks.training.reference import MLP, param_digest, train_mlp
from tests.e2e.helpers import (
    ancestors,
    clone_deployment,
    flow_run_logs,
    flow_run_pids,
    lose_machine,
    retry_like_the_ui,
    start_time,
    still_running,
    trigger_deployment_id,
)
from tests.fixtures.prefect_server import PrefectServer, start_pool_worker, stop_group, wait_until
from tests.fixtures.seaweed import REGION, SeaweedServer

pytestmark = pytest.mark.e2e

POOL = "grd-faults"  # not the session worker's pool: only the two workers of this test may take the run
HEARTBEAT_S = 30  # Prefect's minimum
WINDOW_S = 45  # the automation's window: above one heartbeat interval, well below the documented 90 s
# 16 steps of ~0.2 s per epoch: ~3 s an epoch, ~20 s in all, a checkpoint at every epoch's end.
CONFIG = TrainConfig.model_validate({"epochs": 6, "batch_size": 16, "samples": 256, "step_delay_s": 0.2})


def _create_automation(server: PrefectServer, tmp_path: Path, deployment_id: str) -> str:
    """The documented automation with a short window, limited to flow runs of ``deployment_id``."""
    doc: dict[str, Any] = yaml.safe_load(Path("docs/zombie-flow-runs.automation.yaml").read_text())
    name = f"grd-crash-zombie-e2e-{uuid.uuid4().hex[:8]}"
    doc["name"] = name
    doc["trigger"]["within"] = WINDOW_S
    doc["trigger"]["match_related"] = {"prefect.resource.role": "deployment",
                                       "prefect.resource.id": f"prefect.deployment.{deployment_id}"}
    path = tmp_path / "automation.yaml"
    path.write_text(yaml.safe_dump(doc))
    server.prefect("automation", "create", "--from-file", str(path))
    return name


def _delete_automation(server: PrefectServer, name: str) -> None:
    with server.http() as client:
        response = client.post("/automations/filter", json={})
        response.raise_for_status()
        for automation in response.json():
            if automation["name"] == name:
                client.delete(f"/automations/{automation['id']}").raise_for_status()


def _save_store_block(server: PrefectServer, s3: SeaweedServer, bucket: str) -> str:
    """`grd store create` an S3 CheckpointStore block (endpoint, region and credentials as block fields)."""
    name = f"faults-{uuid.uuid4().hex[:8]}"
    env = {**server.env, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    argv = [str(Path(sys.executable).parent / "grd"), "store", "create", name, f"{bucket}/ckpts",
            "--endpoint-url", s3.endpoint_url, "--region", REGION, "--aws-credentials-from-env"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"grd store create failed: {done.stdout}\n{done.stderr}"
    return name


def test_a_run_whose_machine_dies_is_crashed_then_resumes_on_another_worker_from_s3(
    deployed: PrefectServer, s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    heartbeats = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    workers = {name: start_pool_worker(deployed, name, pool=POOL, extra_env=heartbeats)
               for name in ("faults-a", "faults-b")}
    deployment_id = clone_deployment(deployed, "grd-train/grd-train", name=f"grd-train-{POOL}", pool=POOL)
    automation = _create_automation(deployed, tmp_path, deployment_id)
    engine = CheckpointEngine(f"{s3_bucket}/ckpts", storage_options=s3_server.storage_options)
    try:
        store = _save_store_block(deployed, s3_server, s3_bucket)
        flow_run_id = trigger_deployment_id(deployed, deployment_id,
                                            {"config": CONFIG.model_dump(mode="json"), "store": store})

        # 1. Training is under way and has committed a checkpoint to S3.
        deployed.wait_for_state(flow_run_id, {"RUNNING", "COMPLETED", "FAILED", "CRASHED"}, timeout_s=120)
        wait_until(lambda: engine.latest_checkpoint(flow_run_id), "a checkpoint committed in S3", 120)

        # 2. The machine is lost: its worker and the run's processes, SIGKILLed together.
        engine_pids = flow_run_pids(flow_run_id)
        assert engine_pids, f"no process carries PREFECT__FLOW_RUN_ID={flow_run_id}"
        lost = next(name for name, proc in workers.items()
                    if any(proc.pid in ancestors(pid) for pid in engine_pids))
        survivor = next(name for name in workers if name != lost)
        stamps = {pid: start_time(pid) for pid in engine_pids}
        killed = lose_machine(workers[lost].pid, flow_run_id)
        workers[lost].wait(10)
        # SIGKILL is delivered at once, but a process dies only once it leaves the kernel (a torch process
        # tearing down its memory, one in an fsync): wait, bounded, for every one of them to be gone.
        def none_alive() -> bool:
            return not [pid for pid, st in stamps.items() if st is not None and still_running(pid, st)]

        wait_until(none_alive, f"the lost machine's processes {killed} to be gone", 15, interval_s=0.05)
        at_loss = engine.latest_checkpoint(flow_run_id)
        assert at_loss is not None and 0 < at_loss.index < CONFIG.epochs, at_loss  # really mid-training
        assert deployed.flow_run(flow_run_id)["state"]["type"] == "RUNNING"  # nobody told Prefect

        # 3. Prefect notices by itself: heartbeats stopped, the automation marks the run Crashed.
        crashed = deployed.wait_for_state(flow_run_id, {"CRASHED", "COMPLETED", "FAILED", "CANCELLED"},
                                          timeout_s=WINDOW_S + HEARTBEAT_S + 60)
        assert crashed["state"]["type"] == "CRASHED", crashed["state"]
        assert "No heartbeat" in (crashed["state"]["message"] or ""), crashed["state"]  # the automation

        # 4. "Retry": the surviving worker takes it and resumes from the shared S3 store.
        retry_like_the_ui(deployed, flow_run_id)
        done = deployed.wait_for_state(flow_run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"},
                                       timeout_s=180)
        assert done["state"]["type"] == "COMPLETED", done["state"]
        survivor_log = (deployed.home / f"worker-{survivor}.log").read_text(errors="replace")
        assert f"submitting flow run '{flow_run_id}'" in survivor_log, survivor_log[-3000:]

        def resumed_line() -> re.Match[str] | None:  # logs reach the API in batches, after the state
            logs = "\n".join(flow_run_logs(deployed, flow_run_id))
            return re.search(r"resumed from (\S+) at epoch (\d+)", logs)

        resumed = wait_until(resumed_line, "the run's 'resumed from ... at epoch N' log", 60)
        assert int(resumed.group(2)) >= at_loss.index > 0
        assert resumed.group(1).startswith(f"{s3_bucket}/ckpts/{flow_run_id}/"), resumed.group(1)

        # 5. Same final weights as an uninterrupted run (step_delay_s never changes the numbers).
        final = engine.latest_checkpoint(flow_run_id)
        assert final is not None and final.index == CONFIG.epochs, final
        model = MLP(CONFIG.features, CONFIG.hidden, CONFIG.dropout)
        engine.load_checkpoint(flow_run_id, into={"model": model})
        reference = train_mlp(CONFIG.model_copy(update={"step_delay_s": 0.0}), None)
        assert param_digest(model) == reference.param_digest
    finally:
        _delete_automation(deployed, automation)
        for proc in workers.values():
            stop_group(proc)
