"""Stopping reaches the cluster, and a lost Dask worker is a retry, not a hang (real scheduler, real
worker processes on 127.0.0.1, real signals): a run stopped while a command runs on a worker (Ctrl-C, the
SIGTERM of a cancel) stops that command's whole tree there within its grace; a worker process SIGKILLed
mid-command leaves nothing of the command running (its guardian's keepers run the ladder) and the command
completes on another worker, its row naming the lost try. Survivors are counted by an independent /proc
scan."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from grd_blocks.orchestration.benchmark import BenchmarkRun, CommandPlan, PhasePlan, execute, run_benchmark
from grd_blocks.orchestration.status import Status
from grd_blocks.report import BenchmarkReport, CommandReport, PhaseReport
from grd_blocks.spec import parse_spec
from tests.fixtures.dask_cluster import DaskCluster
from tests.process.helpers import TREE_CHILD, GateClock, marked, wait_for

STOP_WAIT_S = 30.0  # bound on the waits below for a ladder that runs on its own (never a timed assertion)


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


def _tree(pid_dir: Path, *kinds: str) -> str:
    return ", ".join(f"'{item}'" for item in [sys.executable, TREE_CHILD, str(pid_dir), *kinds])


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
      - {{name: tree, run: [{_tree(pid_dir, "ignore_term", "setsid", "daemon")}], grace: 0.5s}}
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
    for pid in pids:
        while pid > 1:
            if pid in by_pid:
                return by_pid[pid]
            try:
                stat = Path(f"/proc/{pid}/stat").read_bytes()
            except OSError:
                break
            pid = int(stat[stat.rfind(b")") + 2:].split()[1])
    raise AssertionError(f"no worker process is an ancestor of {pids}")


def test_a_worker_killed_mid_command_leaves_nothing_running_and_the_command_completes_on_another_worker(
    own_dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """The first try builds a tree (a TERM-ignoring member and a setsid one); its worker process is
    SIGKILLed; the tree goes down the ladder on its own (SIGTERM, grace, SIGKILL: the worker's guardian and
    keepers saw it die) and the second try, on the other worker, finds the first's mark and completes."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    first = tmp_path / "first-try"
    shell = (f"if [ -e {first} ]; then echo second try; exit 0; fi; touch {first}; "
             f"exec {sys.executable} {TREE_CHILD} {pid_dir} ignore_term setsid child")
    spec = f"""
name: lost
phases:
  - name: p
    timeout: 300s
    runner: {{dask: "{own_dask_cluster.address}", attempts: 2}}
    commands:
      - {{name: c, run: '{shell}', grace: 1s}}
"""
    run = BenchmarkRun(spec=parse_spec(spec, base_dir=tmp_path), run_key="lost-1", logs_dir=tmp_path / "logs")
    reports: list[BenchmarkReport] = []

    class Direct:
        def phase(self, phase: PhasePlan, backstop_s: float | None,
                  body: Callable[[], PhaseReport]) -> PhaseReport:
            return body()

        def command(self, plan: CommandPlan, backstop_s: float | None) -> CommandReport:
            return execute(plan)

    thread = threading.Thread(
        target=lambda: reports.append(run_benchmark(run, Direct(), report_path=tmp_path / "r.json").report))
    thread.start()
    assert wait_for((pid_dir / "ready").exists), "the first try's tree never started"
    workers = own_dask_cluster.workers()
    lost = _worker_of(marked(str(pid_dir)), workers)
    os.kill(workers[lost], 9)
    thread.join(STOP_WAIT_S * 4)
    assert not thread.is_alive() and reports
    row = reports[0].phases[0].commands[0]
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
      - {{name: c, run: [{_tree(pid_dir, "setsid", "child")}], grace: 1s}}
"""
    run = BenchmarkRun(spec=parse_spec(spec, base_dir=tmp_path), run_key="lost-2", logs_dir=tmp_path / "logs")
    reports: list[BenchmarkReport] = []

    class Direct:
        def phase(self, phase: PhasePlan, backstop_s: float | None,
                  body: Callable[[], PhaseReport]) -> PhaseReport:
            return body()

        def command(self, plan: CommandPlan, backstop_s: float | None) -> CommandReport:
            return execute(plan)

    thread = threading.Thread(
        target=lambda: reports.append(run_benchmark(run, Direct(), report_path=tmp_path / "r.json").report))
    thread.start()
    assert wait_for((pid_dir / "ready").exists), "the tree never started"
    workers = own_dask_cluster.workers()
    lost = _worker_of(marked(str(pid_dir)), workers)
    os.kill(workers[lost], 9)
    thread.join(STOP_WAIT_S * 4)
    assert not thread.is_alive() and reports
    row = reports[0].phases[0].commands[0]
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
    monkeypatch.setattr("grd_blocks.orchestration.dask_dispatch.ANSWER_S", 0.5)
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
      - {{name: c, run: [{_tree(pid_dir, "setsid", "child")}], grace: 0.5s}}
"""
    run = BenchmarkRun(spec=parse_spec(spec, base_dir=tmp_path), run_key="frozen-1",
                       logs_dir=tmp_path / "logs", clock=GateClock(frozen))
    reports: list[BenchmarkReport] = []

    class Direct:
        def phase(self, phase: PhasePlan, backstop_s: float | None,
                  body: Callable[[], PhaseReport]) -> PhaseReport:
            return body()

        def command(self, plan: CommandPlan, backstop_s: float | None) -> CommandReport:
            return execute(plan)

    thread = threading.Thread(
        target=lambda: reports.append(run_benchmark(run, Direct(), report_path=tmp_path / "r.json").report))
    thread.start()
    assert wait_for((pid_dir / "ready").exists), "the tree never started"
    workers = own_dask_cluster.workers()
    worker_pid = workers[_worker_of(marked(str(pid_dir)), workers)]
    os.kill(worker_pid, signal.SIGSTOP)
    try:
        frozen.touch()  # the driver's deadline passes now
        thread.join(STOP_WAIT_S * 2)
        assert not thread.is_alive() and reports
        assert marked(str(pid_dir)) != []  # a frozen worker cannot stop anything
    finally:
        os.kill(worker_pid, signal.SIGCONT)
    row = reports[0].phases[0].commands[0]
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
      - {{name: c, run: [{_tree(pid_dir, "setsid", "child")}], grace: 1s}}
"""
    run = BenchmarkRun(spec=parse_spec(spec, base_dir=tmp_path), run_key="headless-1",
                       logs_dir=tmp_path / "logs")
    reports: list[BenchmarkReport] = []

    class Direct:
        def phase(self, phase: PhasePlan, backstop_s: float | None,
                  body: Callable[[], PhaseReport]) -> PhaseReport:
            return body()

        def command(self, plan: CommandPlan, backstop_s: float | None) -> CommandReport:
            return execute(plan)

    thread = threading.Thread(
        target=lambda: reports.append(run_benchmark(run, Direct(), report_path=tmp_path / "r.json").report))
    thread.start()
    assert wait_for((pid_dir / "ready").exists), "the tree never started"
    assert own_dask_cluster.scheduler is not None
    own_dask_cluster.scheduler.kill()
    own_dask_cluster.scheduler.wait()
    thread.join(STOP_WAIT_S * 4)
    assert not thread.is_alive() and reports
    row = reports[0].phases[0].commands[0]
    assert row.status is Status.FAILED and row.reason is not None, (row.status, row.reason)
    assert f"the Dask scheduler at {own_dask_cluster.address}" in row.reason, row.reason
    assert wait_for(lambda: marked(str(pid_dir)) == [], STOP_WAIT_S * 2), marked(str(pid_dir))
