"""A phase's commands on a real Ray cluster (a head and a second node on 127.0.0.1): they spread over the
nodes, each in a Ray task under grd's runner there; a deadline leaves no process of the tree, setsid and
SIGTERM-ignoring escapes included (an independent /proc scan); the driver's stop reaches a running remote
command; output streams back while the command runs and is kept byte for byte; the row is a local row plus the
host and the Ray node that ran it; an unreachable cluster, or an address that never answers, fails every
command in a complete report after a bounded connect (``ray_dispatch.CONNECT_S``), never a hang."""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
from pathlib import Path

import pytest

from grd_blocks.orchestration.status import Status
from grd_blocks.spec import parse_spec
from tests.fixtures.ray_cluster import RayCluster
from tests.orchestration.fanout import (
    assert_drivers_deadline_left_no_survivors,
    assert_gated_rows_streamed_and_kept,
    assert_own_deadline_left_no_survivors,
    closed_port,
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



def test_an_unreachable_ray_cluster_fails_every_command_with_one_reason_naming_the_address_and_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens at the address: no command waits on Ray; every row of the complete report is FAILED
    with the reason, and the error is logged once for the run, not once per command."""
    port = closed_port()
    spec = f"""
name: nowhere
runner: {{ray: "127.0.0.1:{port}"}}
phases:
  - name: p
    commands: [{{name: a, run: "true"}}, {{name: b, run: "true"}}]
  - name: q
    commands: [{{name: c, run: "true"}}]
"""
    with caplog.at_level(logging.ERROR, logger="grd.ray"):
        report, _ = run_spec(tmp_path, spec)
    rows = [row for phase in report.phases for row in phase.commands]
    assert [row.name for row in rows] == ["a", "b", "c"]
    for row in rows:
        assert row.status is Status.FAILED and row.reason is not None, (row.status, row.reason)
        reason = row.reason
        assert f"cannot reach the Ray cluster at 127.0.0.1:{port}: nothing accepted a connection" in reason
        assert "CONNECT_S" in reason and "ray start --head" in reason and "GRD_RAY_ADDRESS" in reason
    written = json.loads((tmp_path / "report.json").read_text())
    assert [row["status"] for phase in written["phases"] for row in phase["commands"]] == ["FAILED"] * 3
    errors = [record.getMessage() for record in caplog.records if record.name == "grd.ray"]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], errors


def test_an_address_that_accepts_but_never_answers_fails_after_the_connect_limit_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listening socket that never answers (``ray.init`` alone would wait on it without limit): the
    command is FAILED once ``CONNECT_S`` (1 s here) has passed, naming the address and the limit."""
    monkeypatch.setattr("grd_blocks.orchestration.ray_dispatch.CONNECT_S", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        spec = f"""
name: silent
runner: {{ray: "127.0.0.1:{port}"}}
phases:
  - name: p
    commands: [{{name: c, run: "true"}}]
"""
        report, _ = run_spec(tmp_path, spec)
    row = report.phases[0].commands[0]
    assert row.status is Status.FAILED and row.reason is not None, (row.status, row.reason)
    assert f"127.0.0.1:{port} did not accept a connection and answer within 1s" in row.reason, row.reason


@pytest.mark.skipif(importlib.util.find_spec("grpc") is not None, reason="ray[client] is installed here")
def test_a_ray_client_address_without_ray_client_installed_fails_naming_the_package(tmp_path: Path) -> None:
    spec = """
name: client
runner: {ray: "ray://127.0.0.1:10001"}
phases:
  - name: p
    commands: [{name: c, run: "true"}]
"""
    report, _ = run_spec(tmp_path, spec)
    row = report.phases[0].commands[0]
    assert row.status is Status.FAILED and row.reason is not None, (row.status, row.reason)
    assert "ray://127.0.0.1:10001" in row.reason and "pip install 'ray[client]==" in row.reason, row.reason
