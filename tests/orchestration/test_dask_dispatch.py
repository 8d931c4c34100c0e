"""A phase's commands on a real Dask cluster (a scheduler and worker processes on 127.0.0.1): they spread
over the workers, each under grd's runner there; the deadline travels as seconds left, so neither the
driver's clock nor the worker's can extend it; a deadline leaves no process of the tree, setsid and
SIGTERM-ignoring escapes included (an independent /proc scan); output streams back while the command runs and
is kept byte for byte; the row is a local row plus the host and worker that ran it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from grd_blocks.orchestration.status import Status
from grd_blocks.spec import parse_spec
from tests.fixtures.dask_cluster import DaskCluster
from tests.orchestration.fanout import (
    assert_drivers_deadline_left_no_survivors,
    assert_gated_rows_streamed_and_kept,
    assert_own_deadline_left_no_survivors,
    closed_port,
    gated_commands,
    run_spec,
)
from tests.process.helpers import GateClock, tree_argv


def test_commands_spread_over_the_workers_and_report_the_host_that_ran_them(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """Six commands that each wait until all six run: only 3 workers x 2 threads can hold them at once."""
    gate = tmp_path / "gate"
    gate.mkdir()
    commands = gated_commands(gate, 6)
    spec = f"""
name: spread
runner: {{dask: "{dask_cluster.address}"}}
phases:
  - name: wide
    timeout: 120s
    max_parallel: 6
    commands:
{commands}
"""
    report, runner = run_spec(tmp_path, spec)
    assert_gated_rows_streamed_and_kept(report, runner, tmp_path)
    assert {row.worker for row in report.phases[0].commands} == set(dask_cluster.workers())  # all 3 ran some


def test_the_deadline_travels_as_seconds_left_so_a_skewed_driver_clock_cannot_move_it(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """The driver's clock a million seconds off either way: the worker gets the budget's seconds left."""
    spec = f"""
name: skew
phases:
  - name: p
    runner: {{dask: "{dask_cluster.address}"}}
    commands:
      - {{name: left, run: 'echo "left=$GRD_TIME_LEFT_S"', timeout: 100s}}
"""
    for skew in (-1e6, 1e6):
        report, _ = run_spec(tmp_path / str(skew), spec, clock=lambda skew=skew: time.monotonic() + skew)
        row = report.phases[0].commands[0]
        assert row.status is Status.COMPLETED, row.reason
        left = float(row.stdout_tail.split("left=")[1].split()[0])
        assert 90 < left <= 100


def test_a_deadline_on_the_worker_is_a_timeout_with_no_survivors_even_of_setsid_and_term_ignoring_members(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """Real time on the worker: the command's own 8 s deadline is the worker's; the tree ignores SIGTERM,
    has a setsid child and a grandchild; the grace runs out, SIGKILL, and /proc holds nothing of it."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    argv = ", ".join(f"'{item}'" for item in tree_argv(pid_dir, "ignore_term", "setsid", "child"))
    spec = f"""
name: deadline
runner: {{dask: "{dask_cluster.address}"}}
phases:
  - name: p
    commands:
      - {{name: tree, run: [{argv}], timeout: 8s, grace: 0.5s}}
"""
    report, _ = run_spec(tmp_path, spec)
    row = report.phases[0].commands[0]
    assert_own_deadline_left_no_survivors(row, pid_dir)
    assert row.worker in dask_cluster.workers()


def test_the_drivers_deadline_stops_a_command_on_the_worker_as_a_timeout_with_no_survivors(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """The driver's clock reaches the phase's deadline exactly when the remote tree is built (the worker's
    own deadline is days away): the driver's stop reaches the worker, the tree (TERM-ignoring, with setsid,
    daemon and moved-to-the-cgroup-root members) goes down the ladder there, the row is TIMEOUT at the phase
    level, and an independent /proc scan finds nothing of the tree."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    kinds = ("ignore_term", "setsid", "daemon", "cgroup_root")
    argv = ", ".join(f"'{item}'" for item in tree_argv(pid_dir, *kinds))
    spec = f"""
name: driver-deadline
phases:
  - name: p
    runner: {{dask: "{dask_cluster.address}"}}
    timeout: {GateClock.DEADLINE_IN}
    commands:
      - {{name: tree, run: [{argv}], grace: 0.5s}}
"""
    report, _ = run_spec(tmp_path, spec, clock=GateClock(pid_dir / "ready"))
    row = report.phases[0].commands[0]
    assert_drivers_deadline_left_no_survivors(row, pid_dir)


def test_an_unreachable_scheduler_fails_the_command_naming_the_address_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    spec = f"""
name: nowhere
runner: {{dask: "tcp://127.0.0.1:{port}"}}
phases:
  - name: p
    commands: [{{name: c, run: "true"}}]
"""
    monkeypatch.setattr("grd_blocks.orchestration.dask_dispatch.CONNECT_S", 2.0)
    report, _ = run_spec(tmp_path, spec)
    row = report.phases[0].commands[0]
    assert row.status is Status.FAILED and row.reason is not None
    assert f"tcp://127.0.0.1:{port}" in row.reason and "dask scheduler" in row.reason


@pytest.mark.parametrize("address", ["tcp://h:70000", "http://h:8786", "tcp://h/path", "h:8786"])
def test_a_bad_dask_address_is_a_spec_error_naming_the_key(address: str) -> None:
    from grd_blocks.errors import SpecError

    text = (f"name: x\nphases:\n  - name: p\n    runner: {{dask: '{address}'}}\n"
            "    commands: [{name: c, run: 'true'}]\n")
    with pytest.raises(SpecError) as raised:
        parse_spec(text, source="bad.yaml")
    assert raised.value.line == 4 and raised.value.key == "phases[0].runner.dask"
    assert "tcp://scheduler:8786" in str(raised.value)
