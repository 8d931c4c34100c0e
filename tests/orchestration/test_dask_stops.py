"""Stopping reaches the cluster, and a lost Dask worker is a retry, not a hang (real scheduler, real
worker processes on 127.0.0.1, real signals): a run stopped while a command runs on a worker (Ctrl-C, the
SIGTERM of a cancel) stops that command's whole tree there within its grace; a worker process SIGKILLed
mid-command leaves nothing of the command running (its guardian's keepers run the ladder) and the command
completes on another worker, its row naming the lost try. Survivors are counted by an independent /proc
scan."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from grd_blocks.orchestration.benchmark import BenchmarkRun, CommandPlan, PhasePlan, execute, run_benchmark
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CommandReport, PhaseReport
from grd_blocks.spec import parse_spec
from tests.fixtures.dask_cluster import DaskCluster
from tests.orchestration.fanout import (
    STOP_WAIT_S,
    ancestor_in,
    run_in_background,
    run_spec,
    tree,
    tree_on_first_try,
)
from tests.process.helpers import GateClock, marked, wait_for


class Stopping:
    """Runs each phase's body in a thread and, once ``ready`` exists, interrupts the caller's thread as a
    SIGTERM or Ctrl-C interrupts the flow's main thread; keeps every row a command returned."""

    def __init__(self, ready: Path) -> None:
        self.ready = ready
        self.rows: dict[str, CommandReport] = {}
        self.body: threading.Thread | None = None

    def phase(
        self, phase: PhasePlan, backstop_s: float | None, body: Callable[[], PhaseReport]
    ) -> PhaseReport:
        self.body = threading.Thread(target=body)
        self.body.start()
        assert wait_for(self.ready.exists), "the remote tree never started"
        raise KeyboardInterrupt

    def command(self, plan: CommandPlan, backstop_s: float | None) -> CommandReport:
        self.rows[plan.label] = row = execute(plan)
        return row


def test_stopping_the_run_stops_a_remote_tree_within_its_grace_setsid_and_term_ignoring_members_too(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    spec = f"""
name: stopped
runner: {{dask: "{dask_cluster.address}"}}
phases:
  - name: p
    commands:
      - {{name: tree, run: [{tree(pid_dir, "ignore_term", "setsid", "daemon")}], grace: 0.5s}}
      - {{name: never, run: "true"}}
"""
    runner = Stopping(pid_dir / "ready")
    run = BenchmarkRun(spec=parse_spec(spec, base_dir=tmp_path), run_key="stop-1", logs_dir=tmp_path / "logs")
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(run, runner, report_path=tmp_path / "report.json", stop_is_ours=lambda: False)
    assert runner.body is not None
    runner.body.join(STOP_WAIT_S)
    assert not runner.body.is_alive()
    row = runner.rows["p.tree"]
    assert row.status is Status.CANCELLED and row.returncode == -9, (row.status, row.returncode, row.reason)
    assert row.worker in dask_cluster.workers()
    assert "p.never" not in runner.rows
    assert marked(str(pid_dir)) == []  # the row came back after the ladder ran on the worker


def _worker_of(pids: list[int], workers: dict[str, int]) -> str:
    """The worker address whose process is an ancestor of one of ``pids`` (read from /proc)."""
    by_pid = {pid: address for address, pid in workers.items()}
    return by_pid[ancestor_in(pids, by_pid)]


def test_a_worker_killed_mid_command_leaves_nothing_running_and_the_command_completes_on_another_worker(
    own_dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """The first try builds a tree (a TERM-ignoring member and a setsid one); its worker process is
    SIGKILLed; the tree goes down the ladder on its own (SIGTERM, grace, SIGKILL: the worker's guardian and
    keepers saw it die) and the second try, on the other worker, finds the first's mark and completes."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    shell = tree_on_first_try(tmp_path, pid_dir)
    spec = f"""
name: lost
phases:
  - name: p
    timeout: 300s
    runner: {{dask: "{own_dask_cluster.address}", attempts: 2}}
    commands:
      - {{name: c, run: '{shell}', grace: 1s}}
"""
    background = run_in_background(tmp_path, spec, key="lost-1")
    assert wait_for((pid_dir / "ready").exists), "the first try's tree never started"
    workers = own_dask_cluster.workers()
    lost = _worker_of(marked(str(pid_dir)), workers)
    os.kill(workers[lost], 9)
    row = background.row()
    assert row.status is Status.COMPLETED, (row.status, row.reason, row.note)
    assert row.worker is not None and row.worker != lost and row.worker in workers
    assert row.note is not None and "lost" in row.note and lost in row.note
    assert "second try" in row.stdout_tail
    assert wait_for(lambda: marked(str(pid_dir)) == [], STOP_WAIT_S), marked(str(pid_dir))
    log = Path(row.log_path or "").read_text()
    assert "[grd] its Dask worker was lost" in log and log.endswith("second try\n")


def test_a_command_whose_only_try_lost_its_worker_is_failed_naming_the_loss_and_leaves_nothing(
    own_dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """``attempts: 1``: the lost try is not run again; the row says why, and the tree is gone."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    spec = f"""
name: lost-once
phases:
  - name: p
    runner: {{dask: "{own_dask_cluster.address}", attempts: 1}}
    commands:
      - {{name: c, run: [{tree(pid_dir, "setsid", "child")}], grace: 1s}}
"""
    background = run_in_background(tmp_path, spec, key="lost-2")
    assert wait_for((pid_dir / "ready").exists), "the tree never started"
    workers = own_dask_cluster.workers()
    lost = _worker_of(marked(str(pid_dir)), workers)
    os.kill(workers[lost], 9)
    row = background.row()
    assert row.status is Status.FAILED and row.reason is not None, (row.status, row.reason)
    assert "lost" in row.reason and lost in row.reason and "it had 1 tries (runner.attempts)" in row.reason
    assert wait_for(lambda: marked(str(pid_dir)) == [], STOP_WAIT_S), marked(str(pid_dir))


def test_a_frozen_worker_is_abandoned_after_its_grace_and_its_command_stops_once_it_runs_again(
    own_dask_cluster: DaskCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker running the command is SIGSTOPped, then the driver's deadline passes: its stop cannot be
    read, so the driver waits the grace, the ladder's wait and ``ANSWER_S`` (0.5 s here), gives the try up
    (cancelling its task) and reports TIMEOUT naming it; once the worker runs again, its watcher finds its
    task no longer wanted and stops the tree."""
    monkeypatch.setattr("grd_blocks.orchestration.remote_driver.ANSWER_S", 0.5)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    frozen = tmp_path / "frozen"
    spec = f"""
name: frozen
phases:
  - name: p
    timeout: {GateClock.DEADLINE_IN}
    runner: {{dask: "{own_dask_cluster.address}"}}
    commands:
      - {{name: c, run: [{tree(pid_dir, "setsid", "child")}], grace: 0.5s}}
"""
    background = run_in_background(tmp_path, spec, key="frozen-1", clock=GateClock(frozen))
    assert wait_for((pid_dir / "ready").exists), "the tree never started"
    workers = own_dask_cluster.workers()
    worker_pid = workers[_worker_of(marked(str(pid_dir)), workers)]
    os.kill(worker_pid, signal.SIGSTOP)
    try:
        frozen.touch()  # the driver's deadline passes now
        background.thread.join(STOP_WAIT_S * 2)
        assert not background.thread.is_alive() and background.reports
        assert marked(str(pid_dir)) != []  # a frozen worker cannot stop anything
    finally:
        os.kill(worker_pid, signal.SIGCONT)
    row = background.row()
    assert row.status is Status.TIMEOUT and row.reason is not None, (row.status, row.reason)
    assert "did not answer" in row.reason and "abandoned" in row.reason and "no time left" in row.reason
    assert wait_for(lambda: marked(str(pid_dir)) == [], STOP_WAIT_S), marked(str(pid_dir))


def test_a_scheduler_killed_mid_command_is_a_failed_row_naming_it_not_a_hang_and_leaves_nothing(
    own_dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """The scheduler is SIGKILLed while a command runs: the driver's client gives up reconnecting (10 s),
    the command's row is FAILED naming the scheduler (not retried: nothing answers), and the tree on the
    worker, which lost its scheduler too, is gone soon after."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    spec = f"""
name: headless
phases:
  - name: p
    runner: {{dask: "{own_dask_cluster.address}"}}
    commands:
      - {{name: c, run: [{tree(pid_dir, "setsid", "child")}], grace: 1s}}
"""
    background = run_in_background(tmp_path, spec, key="headless-1")
    assert wait_for((pid_dir / "ready").exists), "the tree never started"
    assert own_dask_cluster.scheduler is not None
    own_dask_cluster.scheduler.kill()
    own_dask_cluster.scheduler.wait()
    row = background.row()
    assert row.status is Status.FAILED and row.reason is not None, (row.status, row.reason)
    assert f"the Dask scheduler at {own_dask_cluster.address}" in row.reason, row.reason
    assert wait_for(lambda: marked(str(pid_dir)) == [], STOP_WAIT_S * 2), marked(str(pid_dir))


def test_stop_phase_stops_a_sibling_running_on_a_worker_within_its_grace(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """on_timeout: stop_phase reaches the cluster: the sibling still running on a worker when 'a' timed out
    (TERM-ignoring, with setsid and daemon members) is stopped there down its ladder, reported CANCELLED with
    the reason, and none of its processes is left (independent /proc scan)."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    wait_ready = f"while [ ! -e {pid_dir}/ready ]; do sleep 0.05; done; exec sleep 60"
    spec = f"""
name: failfast
runner: {{dask: "{dask_cluster.address}"}}
phases:
  - name: p
    max_parallel: 2
    commands:
      - {{name: a, run: "{wait_ready}", timeout: 5s, grace: 0.5s, on_timeout: stop_phase}}
      - {{name: b, run: [{tree(pid_dir, "ignore_term", "setsid", "daemon")}], grace: 0.5s}}
      - {{name: c, run: "true"}}
"""
    report, _ = run_spec(tmp_path, spec, key="failfast-1")
    a, b, c = report.phases[0].commands
    assert a.status is Status.TIMEOUT and c.status is Status.SKIPPED
    assert b.status is Status.CANCELLED and b.reason == "on_timeout=stop_phase after 'p.a' timed out", b
    assert b.worker in dask_cluster.workers() and report.status is Status.TIMEOUT
    assert marked(str(pid_dir)) == []
