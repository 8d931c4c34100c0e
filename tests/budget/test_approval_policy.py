"""The long-run approval policy (budget/approval.py), the one benchmarks and training share: no approval
budget asks nothing and bounds nothing; no estimate caps at the approval budget without asking, and says so;
otherwise the limit is what ``ask`` decided. ``settle`` decides without a person: a recorded decision holds
for the run key (a rejection is raised again), ``auto_approve`` approves and records it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from grd_blocks.budget.approval import Limit, approved_limit, estimate_fits, settle
from grd_blocks.budget.ledger import ApprovalLedger, ApprovalRecord, utc_now
from grd_blocks.errors import ApprovalRejected, DurationError


class _Asker:
    """An ``ask`` that records its calls and answers like a person approving 90 minutes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    def __call__(self, run_key: str, estimate_s: float, default_s: float) -> tuple[float | None, str]:
        self.calls.append((run_key, estimate_s, default_s))
        return 5400.0, "ana@host"


def test_without_an_approval_budget_nothing_is_asked_and_nothing_is_bounded() -> None:
    ask = _Asker()
    assert approved_limit("r", 7200.0, None, ask=ask, no_estimate="-", log=logging.getLogger("t")) is None
    assert ask.calls == []


def test_without_an_estimate_the_run_is_capped_at_the_approval_budget_and_a_warning_says_why(
        caplog: pytest.LogCaptureFixture) -> None:
    ask = _Asker()
    with caplog.at_level(logging.WARNING, logger="t"):
        decided = approved_limit("r", None, "2h", ask=ask, no_estimate="benchmark b has no timeout",
                                 log=logging.getLogger("t"))
    assert decided == Limit(7200.0, "policy") and ask.calls == []
    assert "benchmark b has no timeout: capped at its approval budget of 2h without asking" in caplog.text


def test_with_an_estimate_the_limit_is_what_ask_decided() -> None:
    ask = _Asker()
    decided = approved_limit("r", 9000.0, "1h", ask=ask, no_estimate="-", log=logging.getLogger("t"))
    assert decided == Limit(5400.0, "ana@host") and ask.calls == [("r", 9000.0, 3600.0)]


def test_a_refusal_and_a_malformed_budget_are_raised_before_anything_runs() -> None:
    def refuse(run_key: str, estimate_s: float, default_s: float) -> tuple[float | None, str]:
        raise ApprovalRejected(run_key, who="ana", reason="too long")

    with pytest.raises(ApprovalRejected):
        approved_limit("r", 9000.0, "1h", ask=refuse, no_estimate="-", log=logging.getLogger("t"))
    with pytest.raises(DurationError):
        approved_limit("r", 9000.0, "an hour", ask=_Asker(), no_estimate="-", log=logging.getLogger("t"))


def test_a_malformed_approval_budget_is_refused_naming_the_parameter_before_anything_is_asked() -> None:
    def ask(run_key: str, estimate_s: float, default_s: float) -> tuple[float, str]:
        raise AssertionError("nothing is asked for a malformed budget")

    with pytest.raises(DurationError, match=r"^approval_budget: duration 'soon' is invalid"):
        approved_limit("r", 9000.0, "soon", ask=ask, no_estimate="-", log=logging.getLogger("t"))


def _ledger(tmp_path: Path) -> ApprovalLedger:
    from grd_blocks.checkpoint import CheckpointEngine

    return ApprovalLedger(CheckpointEngine(str(tmp_path / "store")).run("rk").child("approval"), "rk")


def test_an_estimate_within_the_default_budget_or_without_one_needs_no_decision() -> None:
    assert estimate_fits(600, 600) and estimate_fits(10_000, None) and not estimate_fits(601, 600)


def test_settle_asks_nobody_when_the_run_key_was_decided_and_records_the_reuse(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    assert settle(ledger, 1200, auto_approve=False, flow_run_id="fr-1", note=ledger.append) is None
    ledger.append(ApprovalRecord("approved", utc_now(), "ana", 1200, 900.0, "fine", "fr-1"))
    settled = settle(ledger, 1300, auto_approve=False, flow_run_id="fr-2", note=ledger.append)
    assert settled is not None and settled.reused and settled.record.limit_s == 900.0
    assert [r.kind for r in ledger.records()] == ["approved", "reused"]
    assert ledger.records()[-1].flow_run_id == "fr-2" and ledger.records()[-1].estimate_s == 1300


def test_settle_raises_a_recorded_rejection_again_and_auto_approve_records_its_approval(
    tmp_path: Path,
) -> None:
    rejected = _ledger(tmp_path / "a")
    rejected.append(ApprovalRecord("rejected", utc_now(), "bo", 1200, None, "too long", "fr-1"))
    with pytest.raises(ApprovalRejected, match="too long"):
        settle(rejected, 1200, auto_approve=True, flow_run_id="fr-2", note=rejected.append)
    fresh = _ledger(tmp_path / "b")
    settled = settle(fresh, 1200, auto_approve=True, flow_run_id=None, note=fresh.append)
    assert settled is not None and not settled.reused and settled.record.who == "auto_approve"
    assert [(r.kind, r.limit_s) for r in fresh.records()] == [("approved", 1200)]
