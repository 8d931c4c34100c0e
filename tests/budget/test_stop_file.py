"""A budget stop's mark (GRD_TIMEOUT_FILE): any process of the command may make it; a no-op outside grd."""

from __future__ import annotations

from pathlib import Path

from grd_blocks.budget import TIMEOUT_FILE_ENV, budget_stop_marked, mark_budget_stop


def test_marking_outside_grd_does_nothing_and_says_so() -> None:
    assert mark_budget_stop({}) is False


def test_every_rank_may_mark_the_same_stop(tmp_path: Path) -> None:
    path = tmp_path / "stopped-for-budget"
    env = {TIMEOUT_FILE_ENV: str(path)}
    assert not budget_stop_marked(path)
    assert mark_budget_stop(env) and mark_budget_stop(env)
    assert budget_stop_marked(path)


def test_a_mark_that_cannot_be_made_never_raises(tmp_path: Path) -> None:
    assert mark_budget_stop({TIMEOUT_FILE_ENV: str(tmp_path / "gone" / "stopped-for-budget")}) is False
