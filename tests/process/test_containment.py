"""No process of a command's tree outlives its deadline, its cancel event or its own normal exit, in any
containment mode, whatever the tree does: grandchildren, setsid, double forks, an environment scrubbed clean,
SIGTERM ignored, a move to another cgroup (as root), a PID namespace of its own. Survivors are counted
independently, by scanning /proc for the marker every member carries in its command line."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from grd_blocks.process import CommandOutcome, run_command
from tests.process.helpers import GateClock, marked, my_zombies, recorded_roles, tree_argv, wait_for


def _assert_tree_gone(pid_dir: Path, expected_roles: int) -> None:
    roles = recorded_roles(pid_dir)
    assert len(roles) == expected_roles, f"the tree did not start fully: {roles}"
    assert marked(str(pid_dir)) == []
    assert my_zombies() == []


def _run_to_deadline(pid_dir: Path, *kinds: str, grace_s: float = 0.2) -> tuple[int, CommandOutcome]:
    clock = GateClock(pid_dir / "ready")
    outcome = run_command(tree_argv(pid_dir, *kinds), deadline=clock.deadline, grace_s=grace_s, clock=clock)
    return len((pid_dir / "ready").read_text().split()), outcome


def test_kill_reaps_grandchildren(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "child", "child")
    assert roles == 5
    assert outcome.timed_out and not outcome.cancelled
    assert outcome.survivors == 0 and outcome.containment == containment
    assert outcome.returncode == -signal.SIGTERM
    _assert_tree_gone(pid_dir, roles)


def test_kill_reaps_setsid_escapes(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "setsid", "child", "setsid")
    assert outcome.timed_out and outcome.survivors == 0
    _assert_tree_gone(pid_dir, roles)


def test_kill_reaps_double_fork_daemons(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "daemon", "daemon", "child")
    assert outcome.timed_out and outcome.survivors == 0
    _assert_tree_gone(pid_dir, roles)


def test_kill_reaps_setsid_orphans_with_a_scrubbed_environment(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "scrubbed", "child")
    assert outcome.survivors == 0
    _assert_tree_gone(pid_dir, roles)


def test_kill_reaps_a_child_that_moved_itself_to_the_cgroup_root(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "cgroup_root", "child")
    assert outcome.timed_out and outcome.survivors == 0
    _assert_tree_gone(pid_dir, roles)


def test_kill_reaps_a_child_that_moved_itself_into_a_cgroup_it_made(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "cgroup_new", "daemon")
    assert outcome.timed_out and outcome.survivors == 0
    _assert_tree_gone(pid_dir, roles)


def test_kill_reaps_a_child_in_a_pid_namespace_of_its_own(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "pidns", "setsid")
    assert outcome.timed_out and outcome.survivors == 0
    _assert_tree_gone(pid_dir, roles)


def test_sigterm_ignoring_child_is_killed_after_grace(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "ignore_term", "child", "setsid", "daemon", grace_s=0.3)
    assert outcome.timed_out and outcome.survivors == 0
    assert outcome.term_sent_s is not None and outcome.kill_sent_s is not None
    assert outcome.kill_sent_s > outcome.term_sent_s
    assert outcome.returncode == -signal.SIGKILL
    _assert_tree_gone(pid_dir, roles)


def test_grace_zero_goes_straight_to_sigkill(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "child", "daemon", "cgroup_root", grace_s=0.0)
    assert outcome.term_sent_s is None and outcome.kill_sent_s is not None
    assert outcome.returncode == -signal.SIGKILL and outcome.survivors == 0
    _assert_tree_gone(pid_dir, roles)


def test_daemonized_grandchild_does_not_outlive_a_normal_exit(containment: str, pid_dir: Path) -> None:
    outcome = run_command(tree_argv(pid_dir, "daemon", "setsid", "cgroup_new", "exit"), grace_s=0.2)
    assert outcome.returncode == 0 and not outcome.timed_out
    assert outcome.leftover == 3 and outcome.survivors == 0
    assert outcome.term_sent_s is not None
    _assert_tree_gone(pid_dir, 4)


def test_cancel_event_stops_the_whole_tree(containment: str, pid_dir: Path) -> None:
    cancel = threading.Event()
    ready = pid_dir / "ready"

    def cancel_once_ready() -> None:
        if wait_for(ready.exists):
            cancel.set()

    watcher = threading.Thread(target=cancel_once_ready, daemon=True)
    watcher.start()
    outcome = run_command(tree_argv(pid_dir, "child", "daemon", "setsid"), cancel=cancel, grace_s=0.2)
    watcher.join(5)
    assert outcome.cancelled and not outcome.timed_out and outcome.survivors == 0
    _assert_tree_gone(pid_dir, 5)


def test_exception_while_waiting_still_kills_the_tree(containment: str, pid_dir: Path) -> None:
    ready = pid_dir / "ready"

    def clock() -> float:
        if ready.exists():
            raise KeyboardInterrupt  # what a Ctrl-C or a flow cancellation looks like to the waiting thread
        return 0.0

    with pytest.raises(KeyboardInterrupt):
        run_command(tree_argv(pid_dir, "child", "daemon"), deadline=1.0, clock=clock)
    _assert_tree_gone(pid_dir, 4)


def test_the_report_counts_survivors_by_scanning_proc_not_by_trusting_the_keeper(
    containment: str, pid_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keeper that claims to have killed everything while it killed nothing is caught by the scan."""
    from grd_blocks.process.keepers import Keeper

    monkeypatch.setattr(Keeper, "kill", lambda self: 0)
    monkeypatch.setattr(Keeper, "wait_empty", lambda self, timeout: True)
    clock = GateClock(pid_dir / "ready")
    outcome = run_command(
        tree_argv(pid_dir, "ignore_term", "child"), deadline=clock.deadline, grace_s=0.1, clock=clock
    )
    assert outcome.survivors == 3  # main, child, grandchild: all still there when the ladder counted
