"""The cgroup containment on its own: a main process that has not joined its cgroup yet is still stopped; a
finished command's cgroup is removed (an empty one in the background, a busy one never)."""

from __future__ import annotations

import contextlib
import subprocess

import pytest

from grd_blocks.process.cgroup import CgroupTree, drain_removals
from tests.process.helpers import running, wait_for


def test_deadline_before_the_child_joined_its_cgroup_still_kills_it() -> None:
    tree = CgroupTree.create()
    if tree is None:
        pytest.skip("no writable cgroup2 hierarchy here")
    # A process started outside the cgroup stands for a child the deadline caught before its join.
    proc = subprocess.Popen(["sleep", "3600"], start_new_session=True)
    try:
        tree.attach(proc.pid)
        assert tree.live() == {proc.pid}
        assert not tree.wait_empty(0.0)
        tree.kill()
        assert tree.wait_empty(5.0)
        assert not running(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        tree.close()


def _tree() -> CgroupTree:
    tree = CgroupTree.create()
    if tree is None:
        pytest.skip("no writable cgroup2 hierarchy here")
    return tree


def test_an_emptied_cgroup_is_removed_in_the_background_after_close() -> None:
    tree = _tree()
    proc = subprocess.Popen(tree.prepare(["true"], shell=False, env={}), start_new_session=True)
    tree.attach(proc.pid)
    assert proc.wait(10) == 0 and tree.wait_empty(5.0)
    tree.close()
    assert drain_removals(10.0)
    assert not tree.path.exists()


def test_a_cgroup_still_holding_a_process_is_left_in_place_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tree = _tree()
    proc = subprocess.Popen(tree.prepare(["sleep", "3600"], shell=False, env={}), start_new_session=True)
    try:
        tree.attach(proc.pid)
        assert wait_for(tree.populated, 10.0)  # joined: its /bin/sh wrote cgroup.procs
        tree.close()
        assert drain_removals(10.0)
        assert tree.path.exists() and "still busy" in caplog.text
    finally:
        proc.kill()
        proc.wait()
        with contextlib.suppress(OSError):
            tree.path.rmdir()
