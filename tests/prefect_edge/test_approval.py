"""Long-run approval on a real (ephemeral) Prefect API: pause with a form, answer, remember the run key."""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import State

from grd_blocks.cli import approve as cli_approve
from grd_blocks.errors import ApprovalRejected, UsageError
from grd_blocks.prefect_edge.approval import Approval, approve_flow_run, require_approval
from grd_blocks.prefect_edge.artifacts import approval_artifact_key
from grd_blocks.prefect_edge.ledger import open_ledger

pytestmark = pytest.mark.usefixtures("prefect_api")


@flow(name="grd-approval-test", validate_parameters=False)
def needs_approval(run_key: str, store: str, estimate_s: float, auto_approve: bool = False) -> dict[str, Any]:
    approval = require_approval(run_key, estimate_s, 600, auto_approve=auto_approve, store=store,
                                timeout_s=120, poll_interval_s=1)
    return {"limit_s": approval.limit_s, "who": approval.who, "asked": approval.asked,
            "reused": approval.reused}


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def paused_run_id(name: str) -> str | None:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    for run in runs:
        if run.state is not None and run.state.is_paused():
            return str(run.id)
    return None


def run_in_thread(name: str, **params: Any) -> tuple[threading.Thread, dict[str, State[Any]]]:
    out: dict[str, State[Any]] = {}

    def target() -> None:
        out["state"] = needs_approval.with_options(flow_run_name=name)(**params, return_state=True)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_estimate_within_the_default_budget_needs_no_approval_and_no_store(tmp_path: Path) -> None:
    approval = require_approval("r1", 300, 600, store=str(tmp_path / "never"))
    assert approval == Approval(True, 600, "policy", approval.reason, approval.decided_at, estimate_s=300)
    assert not (tmp_path / "never").exists()


def test_over_budget_outside_a_flow_run_says_how_to_get_approval(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="auto_approve=True"):
        require_approval("r1", 3600, 600, store=str(tmp_path))


def test_auto_approve_is_recorded_and_reused_by_the_next_attempt(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = require_approval("ci-run", 3600, 600, auto_approve=True, store=store)
    assert first.approved and first.limit_s == 3600 and first.who == "auto_approve" and not first.reused
    again = require_approval("ci-run", 3600, 600, store=store)  # no auto_approve, no flow: still no question
    assert again.approved and again.reused and again.limit_s == 3600
    assert [r.kind for r in open_ledger(store, "ci-run").records()] == ["approved", "reused"]


def test_paused_run_approved_headless_runs_with_the_granted_limit_and_is_not_asked_again(
    tmp_path: Path,
) -> None:
    store, name = str(tmp_path / "store"), f"approval-{uuid.uuid4().hex[:8]}"
    thread, out = run_in_thread(name, run_key="long-1", store=store, estimate_s=3600)
    flow_run_id = wait_for(lambda: paused_run_id(name), "the flow run to pause for approval")
    parser = argparse.ArgumentParser()
    cli_approve.register(parser.add_subparsers())
    args = parser.parse_args(["approve", flow_run_id, "--minutes", "7", "--reason", "nightly needs it",
                              "--approver", "ana"])
    assert args.func(args) == 0
    thread.join(90)
    result = out["state"].result()
    assert result == {"limit_s": 420.0, "who": "ana", "asked": True, "reused": False}
    # a later attempt with the same run key (a retry, another worker) is not asked again
    again = needs_approval(run_key="long-1", store=store, estimate_s=3600)
    assert again == {"limit_s": 420.0, "who": "ana", "asked": False, "reused": True}
    kinds = [(r.kind, r.who) for r in open_ledger(store, "long-1").records()]
    assert kinds == [("requested", ""), ("approved", "ana"), ("reused", "ana")]
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    keys = {a.key for a in artifact}
    assert approval_artifact_key("long-1") in keys


def test_rejected_run_fails_with_the_reason_and_stays_rejected(tmp_path: Path) -> None:
    store, name = str(tmp_path / "store"), f"reject-{uuid.uuid4().hex[:8]}"
    thread, out = run_in_thread(name, run_key="long-2", store=store, estimate_s=7200)
    flow_run_id = wait_for(lambda: paused_run_id(name), "the flow run to pause for approval")
    approve_flow_run(flow_run_id, minutes=1, reason="too costly this week", approver="bo", reject=True)
    thread.join(90)
    state = out["state"]
    assert state.is_failed() and "too costly this week" in (state.message or "")
    with pytest.raises(ApprovalRejected, match="bo"):
        require_approval("long-2", 7200, 600, store=store)


def test_approve_names_the_problem_for_a_bad_id_or_a_run_that_is_not_paused() -> None:
    with pytest.raises(UsageError, match="not a UUID"):
        approve_flow_run("nope", minutes=5, reason="x", approver="a")
    with pytest.raises(UsageError, match="at least 1"):
        approve_flow_run(str(uuid.uuid4()), minutes=0, reason="x", approver="a")
    with pytest.raises(UsageError, match="no flow run"):
        approve_flow_run(str(uuid.uuid4()), minutes=5, reason="x", approver="a")
