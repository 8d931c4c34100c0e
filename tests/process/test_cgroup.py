"""The cgroup containment on its own: a main process that has not joined its cgroup yet is still stopped; a
finished command's cgroup is kept for the next command or removed (an empty one in the background, a busy one
never), and a kept one is only ever handed out empty, in this process."""

from __future__ import annotations

import contextlib
import os
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


def _run_true_in(tree: CgroupTree) -> None:
    proc = subprocess.Popen(tree.prepare(["true"], shell=False, env={}), start_new_session=True)
    tree.attach(proc.pid)
    assert proc.wait(10) == 0 and tree.wait_empty(5.0)


def test_an_emptied_cgroup_is_kept_and_handed_empty_to_the_next_command() -> None:
    assert drain_removals(10.0)
    first = _tree()
    _run_true_in(first)
    first.close()
    assert drain_removals(10.0, keep_empty=True)
    assert first.path.exists()
    second = _tree()
    try:
        assert second.path == first.path and not second.populated() and second.live() == set()
        _run_true_in(second)  # a command joins and leaves it as it would a new one
    finally:
        second.close()
    assert drain_removals(10.0)
    assert not first.path.exists()


def test_a_cgroup_with_a_cgroup_below_it_is_removed_not_kept() -> None:
    assert drain_removals(10.0)
    tree = _tree()
    (tree.path / "nested").mkdir()  # a command that made cgroups of its own
    _run_true_in(tree)
    tree.close()
    assert drain_removals(10.0, keep_empty=True)
    assert not tree.path.exists()
    other = _tree()
    try:
        assert other.path != tree.path
    finally:
        other.close()
        assert drain_removals(10.0)


def test_a_forked_child_is_never_handed_its_parents_kept_cgroups() -> None:
    assert drain_removals(10.0)
    tree = _tree()
    _run_true_in(tree)
    tree.close()
    assert drain_removals(10.0, keep_empty=True) and tree.path.exists()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: take a cgroup, say which, give it back
        try:
            child_tree = CgroupTree.create()
            os.write(write_end, str(child_tree.path if child_tree else "").encode())
            if child_tree is not None:
                child_tree.close()
                drain_removals(5.0)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        child_path = reader.read().decode()
    os.waitpid(pid, 0)
    try:
        assert child_path and child_path != str(tree.path)
        assert tree.path.exists()  # still the parent's, still kept
        assert _tree_path_reused(tree)
    finally:
        assert drain_removals(10.0)


def _tree_path_reused(kept: CgroupTree) -> bool:
    again = _tree()
    try:
        return again.path == kept.path
    finally:
        again.close()
