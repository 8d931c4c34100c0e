"""The long-run approval policy (budget/approval.py), the one benchmarks and training share: no approval
budget asks nothing and bounds nothing; no estimate caps at the approval budget without asking, and says so;
otherwise the limit is what ``ask`` decided."""

from __future__ import annotations

import logging

import pytest

from grd_blocks.budget.approval import Limit, approved_limit
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
