"""Run identity: explicit key, else the resumed run's key, else the flow run id; keys are validated."""

from __future__ import annotations

import pytest

from grd_blocks.errors import InvalidRunKey, UsageError
from grd_blocks.orchestration.runkey import resolve_run_key


def test_explicit_key_wins_then_resume_then_flow_run_id() -> None:
    assert resolve_run_key("nightly", None, "abc") == "nightly"
    assert resolve_run_key(None, "old-run", "abc") == "old-run"
    assert resolve_run_key(None, None, "0f0e-1") == "0f0e-1"


def test_conflicting_run_key_and_resume_are_refused_naming_both() -> None:
    with pytest.raises(UsageError, match=r"'a'.*'b'"):
        resolve_run_key("a", "b", None)


@pytest.mark.parametrize("bad", ["a/b", "..", "with space", "x" * 129])
def test_run_keys_outside_the_rule_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRunKey):
        resolve_run_key(bad, None, None)


def test_no_identity_at_all_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no run key"):
        resolve_run_key(None, None, None)
