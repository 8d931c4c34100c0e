"""A phase's commands on a real Ray cluster (a head and a second node on 127.0.0.1): they spread over the
nodes, each in a Ray task under grd's runner there; a deadline leaves no process of the tree, setsid and
SIGTERM-ignoring escapes included (an independent /proc scan); the driver's stop reaches a running remote
command; output streams back while the command runs and is kept byte for byte; the row is a local row plus the
host and the Ray node that ran it."""

from __future__ import annotations

from pathlib import Path

import pytest

from grd_blocks.spec import parse_spec
from tests.fixtures.ray_cluster import RayCluster
from tests.orchestration.fanout import (
    assert_drivers_deadline_left_no_survivors,
    assert_gated_rows_streamed_and_kept,
    assert_own_deadline_left_no_survivors,
    gated_commands,
    run_spec,
)
from tests.process.helpers import GateClock, tree_argv


def test_commands_spread_over_the_nodes_and_report_the_node_that_ran_them(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """Four commands that each wait until all four run, each asking Ray for 1 CPU: only the two nodes of 2
    CPUs together can hold them at once."""
    gate = tmp_path / "gate"
    gate.mkdir()
    commands = gated_commands(gate, 4)
    spec = f"""
name: spread
runner: {{ray: "{ray_cluster.address}", num_cpus: 1}}
phases:
  - name: wide
    timeout: 180s
    max_parallel: 4
    commands:
{commands}
"""
    report, runner = run_spec(tmp_path, spec)
    assert_gated_rows_streamed_and_kept(report, runner, tmp_path)
    assert {row.worker for row in report.phases[0].commands} == set(ray_cluster.nodes)  # both nodes ran some


def test_a_deadline_on_the_node_is_a_timeout_with_no_survivors_even_of_setsid_and_term_ignoring_members(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """Real time on the node: the command's own 15 s deadline travels as seconds left; the tree ignores
    SIGTERM, has a setsid child and a grandchild; the grace runs out, SIGKILL, and /proc holds nothing of
    it."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    argv = ", ".join(f"'{item}'" for item in tree_argv(pid_dir, "ignore_term", "setsid", "child"))
    spec = f"""
name: deadline
runner: {{ray: "{ray_cluster.address}"}}
phases:
  - name: p
    commands:
      - {{name: tree, run: [{argv}], timeout: 15s, grace: 0.5s}}
"""
    report, _ = run_spec(tmp_path, spec)
    row = report.phases[0].commands[0]
    assert_own_deadline_left_no_survivors(row, pid_dir)
    assert row.worker in ray_cluster.nodes


def test_the_drivers_stop_reaches_a_running_remote_command_with_no_survivors(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """The driver's clock reaches the phase's deadline exactly when the remote tree is built (the node's own
    deadline is days away): the driver's stop reaches the Ray task, the tree (TERM-ignoring, with setsid and
    daemon members) goes down the ladder there, the row is TIMEOUT at the phase level, and an independent
    /proc scan finds nothing of the tree."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    argv = ", ".join(f"'{item}'" for item in tree_argv(pid_dir, "ignore_term", "setsid", "daemon"))
    spec = f"""
name: driver-deadline
phases:
  - name: p
    runner: {{ray: "{ray_cluster.address}"}}
    timeout: {GateClock.DEADLINE_IN}
    commands:
      - {{name: tree, run: [{argv}], grace: 0.5s}}
"""
    report, _ = run_spec(tmp_path, spec, clock=GateClock(pid_dir / "ready"))
    row = report.phases[0].commands[0]
    assert_drivers_deadline_left_no_survivors(row, pid_dir)
    assert row.worker in ray_cluster.nodes


@pytest.mark.parametrize(("runner", "key", "said"), [
    ("{ray: 'http://h:1'}", "phases[0].runner.ray", "ray://"),
    ("{ray: 'h'}", "phases[0].runner.ray", "names no port"),
    ("{ray: 'ray://h:70000'}", "phases[0].runner.ray", "outside 1-65535"),
    ("{ray: 'h:1', dask: 'tcp://h:2'}", "phases[0].runner.ray", "both"),
    ("{dask: 'tcp://h:2', num_gpus: 1}", "phases[0].runner.num_gpus", "Ray resource"),
    ("{attempts: 2}", "phases[0].runner", "names no cluster"),
])
def test_a_bad_ray_runner_is_a_spec_error_naming_the_key_and_the_fix(runner: str, key: str,
                                                                      said: str) -> None:
    from grd_blocks.errors import SpecError

    text = (f"name: x\nphases:\n  - name: p\n    runner: {runner}\n"
            "    commands: [{name: c, run: 'true'}]\n")
    with pytest.raises(SpecError) as raised:
        parse_spec(text, source="bad.yaml")
    assert raised.value.line == 4 and raised.value.key == key, (raised.value.key, str(raised.value))
    assert said in str(raised.value) and "ray" in str(raised.value)


def test_the_environment_names_the_ray_cluster_of_phases_without_a_runner() -> None:
    from grd_blocks.errors import UsageError
    from grd_blocks.orchestration.benchmark import RAY_ENV, ray_address
    from grd_blocks.orchestration.plan import RayTarget, plan_benchmark

    assert ray_address({RAY_ENV: " auto "}) == "auto" and ray_address({}) is None
    with pytest.raises(UsageError, match=RAY_ENV):
        ray_address({RAY_ENV: "http://h:1"})
    spec = parse_spec("name: x\nphases:\n  - name: p\n    commands: [{name: c, run: 'true'}]\n"
                      "    cleanup: {name: d, run: 'true'}\n")
    phase = plan_benchmark(spec, ray="auto").phases[0]
    assert phase.ray == RayTarget("auto") and phase.commands[0].ray == RayTarget("auto")
    assert phase.cleanup is not None and phase.cleanup.ray is None  # cleanups run on this machine
    assert plan_benchmark(spec, dask="tcp://h:1", ray="auto").phases[0].ray is None  # Dask set: Dask wins

