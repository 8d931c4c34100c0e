"""No process of a command's tree outlives its deadline, its cancel event or its own normal exit, under either
containment. Survivors are checked independently by scanning /proc for the pids the children recorded."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from grd_blocks.process import CommandOutcome, run_command
from grd_blocks.process.sweep import TOKEN_ENV
from tests.process.helpers import GateClock, recorded_pids, running, tree_argv, wait_for, zombie_children


def _assert_tree_gone(pid_dir: Path, expected_roles: int) -> None:
    pids = recorded_pids(pid_dir)
    assert len(pids) == expected_roles, f"the tree did not start fully: {sorted(pids)}"
    assert [role for role, pid in pids.items() if running(pid)] == []
    assert zombie_children(list(pids.values())) == []


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


def test_sigterm_ignoring_child_is_killed_after_grace(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "ignore_term", "child", "setsid", "daemon", grace_s=0.3)
    assert outcome.timed_out and outcome.survivors == 0
    assert outcome.term_sent_s is not None and outcome.kill_sent_s is not None
    assert outcome.kill_sent_s > outcome.term_sent_s
    assert outcome.returncode == -signal.SIGKILL
    _assert_tree_gone(pid_dir, roles)


def test_grace_zero_goes_straight_to_sigkill(containment: str, pid_dir: Path) -> None:
    roles, outcome = _run_to_deadline(pid_dir, "child", "daemon", grace_s=0.0)
    assert outcome.term_sent_s is None and outcome.kill_sent_s is not None
    assert outcome.returncode == -signal.SIGKILL and outcome.survivors == 0
    _assert_tree_gone(pid_dir, roles)


def test_cgroup_catches_setsid_orphans_with_a_scrubbed_environment(pid_dir: Path, containment: str) -> None:
    if containment != "cgroup":
        pytest.skip("the sweep cannot tell an env-scrubbed setsid orphan from any other orphan (documented)")
    roles, outcome = _run_to_deadline(pid_dir, "scrubbed", "child")
    assert outcome.survivors == 0
    _assert_tree_gone(pid_dir, roles)


def test_daemonized_grandchild_does_not_outlive_a_normal_exit(containment: str, pid_dir: Path) -> None:
    outcome = run_command(tree_argv(pid_dir, "daemon", "setsid", "exit"), grace_s=0.2)
    assert outcome.returncode == 0 and not outcome.timed_out
    assert outcome.leftover == 2 and outcome.survivors == 0
    assert outcome.term_sent_s is not None
    _assert_tree_gone(pid_dir, 3)


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


def test_tree_token_stays_out_of_the_callers_environment(containment: str, pid_dir: Path) -> None:
    env = dict(os.environ)
    env.pop(TOKEN_ENV, None)
    before = dict(env)
    clock = GateClock(pid_dir / "ready")
    outcome = run_command(
        tree_argv(pid_dir, "daemon"), env=env, deadline=clock.deadline, clock=clock, grace_s=0
    )
    assert outcome.timed_out and outcome.survivors == 0
    assert env == before
    assert TOKEN_ENV not in os.environ
    _assert_tree_gone(pid_dir, 2)


def test_outer_token_is_kept_so_nested_trees_stay_findable(
    pid_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRD_FORCE_FALLBACK", "1")
    env = {**os.environ, TOKEN_ENV: "outer-token"}
    outcome = run_command(f'printf "%s" "${TOKEN_ENV}"', env=env)
    tokens = outcome.stdout_tail.split(":")
    assert tokens[0] == "outer-token" and len(tokens) == 2 and tokens[1]


def test_subreaper_flag_is_released_once_fallback_commands_end(
    pid_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctypes

    monkeypatch.setenv("GRD_FORCE_FALLBACK", "1")
    libc = ctypes.CDLL(None, use_errno=True)
    flag = ctypes.c_int(-1)

    def subreaper_flag() -> int:
        assert libc.prctl(37, ctypes.byref(flag), 0, 0, 0) == 0  # PR_GET_CHILD_SUBREAPER
        return flag.value

    seen_during: list[int] = []
    outcome = run_command("echo hi", on_line=lambda _s, _l: seen_during.append(subreaper_flag()))
    assert outcome.containment == "subreaper" and seen_during == [1]
    assert subreaper_flag() == 0  # orphans of unrelated code go to init again, not to this process
