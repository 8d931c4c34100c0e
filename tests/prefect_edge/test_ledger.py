"""The approval ledger: decisions committed to the store are seen by every later reader of the run key."""

from __future__ import annotations

from pathlib import Path

import pytest

from grd_blocks.budget.ledger import ApprovalRecord, utc_now
from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.errors import ConfigError
from grd_blocks.prefect_edge.artifacts import approval_artifact_key, artifact_key, render_audit
from grd_blocks.prefect_edge.ledger import open_ledger


def _record(kind: str, who: str = "ana", limit_s: float | None = 600.0) -> ApprovalRecord:
    return ApprovalRecord(kind, utc_now(), who, 1200.0, limit_s, "because", "fr-1")  # type: ignore[arg-type]


def test_decision_committed_by_one_worker_is_seen_by_a_fresh_ledger(tmp_path: Path) -> None:
    first = open_ledger(CheckpointEngine(str(tmp_path / "store")), "run_42")
    first.append(_record("requested", who=""))
    first.append(_record("approved"))
    other_worker = open_ledger(str(tmp_path / "store"), "run_42")  # same store by URL, new objects
    decision = other_worker.decision()
    assert decision is not None and decision.kind == "approved" and decision.limit_s == 600.0
    assert [r.kind for r in other_worker.records()] == ["requested", "approved"]
    assert (tmp_path / "store" / "run_42" / "approval").is_dir()


def test_a_request_without_decision_is_not_a_decision(tmp_path: Path) -> None:
    ledger = open_ledger(str(tmp_path), "r1")
    assert ledger.records() == [] and ledger.decision() is None
    ledger.append(_record("requested"))
    ledger.append(_record("expired"))
    assert ledger.decision() is None


def test_newest_decision_wins_and_reuse_does_not_count_as_one(tmp_path: Path) -> None:
    ledger = open_ledger(str(tmp_path), "r1")
    ledger.append(_record("rejected", limit_s=None))
    ledger.append(_record("reused"))
    decision = ledger.decision()
    assert decision is not None and decision.kind == "rejected"


def test_open_ledger_names_a_bad_store_and_the_fix() -> None:
    with pytest.raises(ConfigError, match="CheckpointStore, CheckpointEngine, block name or URL"):
        open_ledger(42, "r1")


@pytest.mark.parametrize("run_key", ["run_42", "Run.42", "nightly-2026-11-23", "a" * 128, "x__y..z"])
def test_artifact_keys_follow_prefects_rule(run_key: str) -> None:
    key = approval_artifact_key(run_key)
    assert key.startswith("grd-approval-")
    assert all(c.islower() or c.isdigit() or c == "-" for c in key) and len(key) <= 120


def test_run_keys_that_differ_only_in_punctuation_get_distinct_artifacts() -> None:
    keys = {approval_artifact_key(k) for k in ("run_a", "run.a", "run-a", "RUN-a")}
    assert len(keys) == 4
    assert artifact_key("grd-approval", "already-valid-1") == "grd-approval-already-valid-1"


def test_audit_table_lists_every_record_with_who_limit_and_reason() -> None:
    text = render_audit("r1", [_record("requested", who=""), _record("approved", who="ana|b")],
                        default_budget_s=600)
    rows = [line for line in text.splitlines() if line.startswith("| 20")]
    assert len(rows) == 2
    assert "approved" in rows[1] and "ana\\|b" in rows[1] and "10.0 min" in rows[1] and "because" in rows[1]
