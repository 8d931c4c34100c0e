"""The cgroup containment on its own: a main process that has not joined its cgroup yet is still stopped."""

from __future__ import annotations

import subprocess

import pytest

from grd_blocks.process.cgroup import CgroupTree
from tests.process.helpers import running


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
