"""A budget stop's mark (GRD_TIMEOUT_FILE): any process of the command may make it; a no-op outside grd."""

from __future__ import annotations

import os
from pathlib import Path

from grd_blocks.budget import TIMEOUT_FILE_ENV, budget_stop_marked, mark_budget_stop
from grd_blocks.budget.stop_file import forget, fresh_timeout_file


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


def test_a_fresh_timeout_file_does_not_exist_and_is_never_handed_out_twice() -> None:
    paths = {fresh_timeout_file() for _ in range(1000)}
    assert len(paths) == 1000 and not any(os.path.lexists(path) for path in paths)


def test_a_timeout_file_can_still_be_made_after_its_folder_was_removed_behind_grds_back() -> None:
    import shutil

    shutil.rmtree(os.path.dirname(fresh_timeout_file()))  # e.g. a tmp cleaner, on a machine up for weeks
    path = fresh_timeout_file()
    assert mark_budget_stop({TIMEOUT_FILE_ENV: str(path)}) and budget_stop_marked(path)
    forget(path)
    assert not budget_stop_marked(path)
