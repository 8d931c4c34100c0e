"""Rollup of statuses and exit codes: TIMEOUT is never FAILED; FAILED wins over TIMEOUT."""

from __future__ import annotations

from grd_blocks.orchestration.status import Status, exit_code, rollup

S = Status


def test_failed_wins_over_timeout_and_timeout_over_completed() -> None:
    assert rollup([S.COMPLETED, S.TIMEOUT, S.FAILED]) is S.FAILED
    assert rollup([S.COMPLETED, S.TIMEOUT, S.SKIPPED]) is S.TIMEOUT
    assert rollup([S.COMPLETED, S.COMPLETED]) is S.COMPLETED


def test_timeout_is_never_reported_as_failed() -> None:
    assert rollup([S.TIMEOUT, S.TIMEOUT]) is S.TIMEOUT
    assert exit_code(S.TIMEOUT) == 124


def test_expired_budget_makes_a_node_timeout_unless_something_failed() -> None:
    assert rollup([S.COMPLETED, S.SKIPPED], budget_expired=True) is S.TIMEOUT
    assert rollup([S.FAILED, S.SKIPPED], budget_expired=True) is S.FAILED


def test_all_skipped_is_skipped_and_empty_is_completed() -> None:
    assert rollup([S.SKIPPED, S.SKIPPED]) is S.SKIPPED
    assert rollup([]) is S.COMPLETED


def test_cancelled_ranks_below_timeout() -> None:
    assert rollup([S.CANCELLED, S.COMPLETED]) is S.CANCELLED
    assert rollup([S.CANCELLED, S.TIMEOUT]) is S.TIMEOUT


def test_exit_codes_follow_the_design() -> None:
    statuses = (S.COMPLETED, S.FAILED, S.TIMEOUT, S.CANCELLED, S.SKIPPED)
    assert [exit_code(s) for s in statuses] == [0, 1, 124, 1, 0]
