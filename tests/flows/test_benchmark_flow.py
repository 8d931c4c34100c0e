"""The benchmark flow on a real Prefect API with real processes: deadlines, statuses, states, artifacts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import cast

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)

from grd_blocks.orchestration.status import Status
from grd_blocks.prefect_edge.artifacts import results_artifact_key
from tests.flows.helpers import run_spec
from tests.orchestration.fanout import tree
from tests.process.helpers import marked

pytestmark = pytest.mark.usefixtures("prefect_api")


async def _artifact(key: str) -> tuple[list[dict[str, str]], str]:
    """The latest results table under ``key``: its rows and its description, as the UI reads them."""
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    data = found[0].data if found else "[]"
    raw = json.loads(data) if isinstance(data, str) else data
    rows = cast(list[dict[str, str]], raw or [])
    return rows, (found[0].description or "") if found else ""


async def _artifact_rows(key: str) -> list[dict[str, str]]:
    rows, _ = await _artifact(key)
    return rows


def test_a_results_table_past_its_limit_shows_every_failure_and_names_the_report_with_all_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("grd_blocks.report.TABLE_ROWS", 3)  # the limit is 1,000: 5 rows make the same point
    result = run_spec(tmp_path, """
        name: capped
        phases:
          - name: p
            commands:
              - {name: a, run: "true"}
              - {name: b, run: "true"}
              - {name: c, run: "exit 2"}
              - {name: d, run: "true"}
              - {name: e, run: "exit 3"}
        """)
    assert [row.status for row in result.phase("p").commands].count(Status.COMPLETED) == 3
    rows, description = asyncio.run(_artifact(results_artifact_key("capped")))
    assert [(r["command"], r["status"]) for r in rows] == [("a", "✅ COMPLETED"), ("c", "❌ FAILED"),
                                                          ("e", "❌ FAILED")]
    assert "the table shows 3 of 5 commands" in description, description
    assert str(result.report_path) in description, description


def test_a_90s_command_in_a_phase_with_2s_is_stopped_and_reported_inherited(tmp_path: Path) -> None:
    result = run_spec(tmp_path, """
        name: inherit-demo
        timeout: 5m
        phases:
          - name: smoke
            timeout: 2s
            commands:
              - name: train
                run: sleep 90
                timeout: 90s
                grace: 1s
        """)
    row = result.command("smoke", "train")
    assert row.status is Status.TIMEOUT and row.timeout is not None
    assert (row.timeout.level, row.timeout.inherited, row.timeout.configured_s) == ("phase", True, 90)
    assert row.timeout.effective_s is not None and row.timeout.effective_s <= 2
    assert row.elapsed_s < 30 and row.timeout.survivors == 0
    assert result.phase("smoke").status is Status.TIMEOUT
    assert result.report.status is Status.TIMEOUT and result.report.exit_code == 124
    assert result.state.is_failed() and result.state.name == "TimedOut"
    rows = asyncio.run(_artifact_rows(results_artifact_key("inherit-demo")))
    assert [(r["command"], r["status"]) for r in rows] == [("train", "⏱ TIMEOUT")]


def test_completed_and_failed_statuses_roll_up_and_match_the_flow_state(tmp_path: Path) -> None:
    result = run_spec(tmp_path, """
        name: mixed
        phases:
          - name: p
            commands:
              - {name: ok, run: echo hello}
              - {name: bad, run: "echo oops >&2; exit 3"}
          - name: q
            commands:
              - {name: later, run: "true"}
        """)
    assert result.command("p", "ok").status is Status.COMPLETED
    bad = result.command("p", "bad")
    assert (bad.status, bad.returncode, bad.stderr_tail.strip()) == (Status.FAILED, 3, "oops")
    assert result.phase("q").status is Status.COMPLETED
    assert result.report.status is Status.FAILED and result.report.exit_code == 1
    assert result.state.is_failed() and result.state.name == "Failed"


def test_all_completed_is_exit_0_and_a_completed_state_and_logs_are_saved(tmp_path: Path) -> None:
    result = run_spec(tmp_path, """
        name: green
        phases:
          - name: p
            commands:
              - {name: hello, run: "echo hello $GRD_RUN_KEY"}
        """)
    row = result.command("p", "hello")
    assert row.status is Status.COMPLETED and "hello t1" in row.stdout_tail
    assert row.log_path is not None and "hello t1" in Path(row.log_path).read_text()
    assert Path(row.log_path).parent == result.report_path.parent / "t1"
    assert result.report.exit_code == 0 and result.state.is_completed()


_POLICY_SPEC = """
    name: policy
    defaults: {{grace: 0.5s}}
    phases:
      - name: a
        commands:
          - {{name: slow, run: sleep 30, timeout: 0.5s, on_timeout: {policy}}}
          - {{name: next, run: "true"}}
      - name: b
        commands:
          - {{name: other, run: "true"}}
    """


@pytest.mark.parametrize(
    ("policy", "next_status", "other_status"),
    [
        ("continue", Status.COMPLETED, Status.COMPLETED),
        ("stop_phase", Status.SKIPPED, Status.COMPLETED),
        ("stop_benchmark", Status.SKIPPED, Status.SKIPPED),
    ],
)
def test_on_timeout_policy_decides_what_is_skipped(tmp_path: Path, policy: str, next_status: Status,
                                                   other_status: Status) -> None:
    result = run_spec(tmp_path, _POLICY_SPEC.format(policy=policy))
    slow = result.command("a", "slow")
    assert slow.status is Status.TIMEOUT and slow.timeout is not None and slow.timeout.level == "command"
    assert not slow.timeout.inherited
    assert result.command("a", "next").status is next_status
    assert result.command("b", "other").status is other_status
    if next_status is Status.SKIPPED:
        assert f"on_timeout={policy}" in (result.command("a", "next").reason or "")
    assert result.report.status is Status.TIMEOUT and result.report.exit_code == 124


def test_stop_phase_stops_a_running_sibling_within_its_grace_and_leaves_none_of_its_processes(
    tmp_path: Path,
) -> None:
    """on_timeout: stop_phase is a fail-fast: a sibling running beside the command that timed out (a tree
    that ignores SIGTERM, with setsid and daemon members) is stopped down its kill ladder, not left to its own
    deadline; it is CANCELLED with the reason, the phase and run are TIMEOUT, and no process of it is left
    (an independent /proc scan for its marker)."""
    pid_dir = tmp_path / "tree"
    pid_dir.mkdir()
    result = run_spec(tmp_path, f"""
        name: failfast
        phases:
          - name: p
            max_parallel: 2
            commands:
              - name: a
                run: "while [ ! -e {pid_dir}/ready ]; do sleep 0.05; done; exec sleep 60"
                timeout: 5s
                grace: 0.5s
                on_timeout: stop_phase
              - {{name: b, run: [{tree(pid_dir, "ignore_term", "setsid", "daemon")}], grace: 0.5s}}
              - {{name: c, run: "true"}}
          - name: q
            commands:
              - {{name: d, run: "true"}}
        """)
    a, b, c = (result.command("p", name) for name in ("a", "b", "c"))
    assert a.status is Status.TIMEOUT
    assert b.status is Status.CANCELLED and b.reason == "on_timeout=stop_phase after 'p.a' timed out"
    assert c.status is Status.SKIPPED and result.command("q", "d").status is Status.COMPLETED
    assert result.report.status is Status.TIMEOUT and result.report.exit_code == 124
    assert marked(str(pid_dir)) == []


def test_parallel_commands_overlap_and_keep_independent_timers(tmp_path: Path) -> None:
    result = run_spec(tmp_path, """
        name: parallel
        phases:
          - name: p
            max_parallel: 2
            timeout: 60s
            commands:
              - name: short
                run: "touch $D/short.started; sleep 60"
                timeout: 1.5s
                grace: 0.5s
              - name: long
                run: >-
                  while [ ! -e $D/short.started ]; do sleep 0.05; done; sleep 3; echo long-done
                timeout: 30s
        """)
    short, long = result.command("p", "short"), result.command("p", "long")
    assert short.status is Status.TIMEOUT and short.timeout is not None
    assert (short.timeout.level, short.timeout.inherited) == ("command", False)
    # `long` waited for `short` to start and then outlived short's deadline: timers are per command, and the
    # two ran at once (the phase took less than their elapsed times added up).
    assert long.status is Status.COMPLETED and "long-done" in long.stdout_tail
    assert result.phase("p").elapsed_s < short.elapsed_s + long.elapsed_s


def test_cleanup_runs_after_a_timeout_and_a_hanging_cleanup_is_killed_and_recorded(tmp_path: Path) -> None:
    result = run_spec(tmp_path, """
        name: cleanups
        phases:
          - name: p
            timeout: 1s
            commands:
              - {name: work, run: sleep 60, grace: 0.5s}
            cleanup:
              name: hang
              run: "echo cleaning > $D/cleaned; sleep 60"
              timeout: 1s
              grace: 0.5s
        cleanup:
          name: final
          run: "echo bye > $D/final"
        """)
    assert result.command("p", "work").status is Status.TIMEOUT
    hang = result.phase("p").cleanup
    assert hang is not None and hang.status is Status.TIMEOUT
    assert hang.timeout is not None and hang.timeout.level == "cleanup" and hang.timeout.survivors == 0
    assert (tmp_path / "cleaned").read_text().strip() == "cleaning"  # it ran after the phase had expired
    final = result.report.cleanup
    assert final is not None and final.status is Status.COMPLETED and (tmp_path / "final").exists()
    assert result.report.status is Status.TIMEOUT


def test_no_timeouts_disables_every_deadline(tmp_path: Path) -> None:
    result = run_spec(tmp_path, """
        name: debug
        timeout: 0.2s
        phases:
          - name: p
            timeout: 0.2s
            commands:
              - {name: nap, run: sleep 1, timeout: 0.2s}
        """, timeouts=False)
    assert result.command("p", "nap").status is Status.COMPLETED
    assert result.report.timeouts is False and result.report.exit_code == 0


def test_each_command_task_run_is_named_phase_dot_command_and_the_final_cleanup_benchmark_dot_name(
    tmp_path: Path,
) -> None:
    result = run_spec(tmp_path, """
        name: named
        phases:
          - name: p
            commands:
              - {name: first, run: "true"}
              - {name: second, run: "true"}
            cleanup: {name: tidy, run: "true"}
        cleanup: {name: final, run: "true"}
        """)
    flow_run_id = result.state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        ids = [flow_run_id, *(run.id for run in subflows)]
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    names = sorted(run.name for run in task_runs if "command_task" in run.task_key)
    assert names == ["named.final", "p.first", "p.second", "p.tidy"]
    assert [run.name for run in subflows] == ["p"]
    assert all(run.parameters == {"phase": "p"} for run in subflows)
    # each task's one argument is its plan entry, handed whole (quoted: Prefect does not walk into it)
    assert all(set(run.task_inputs) == {"plan"} for run in task_runs if "command_task" in run.task_key)


@pytest.mark.parametrize("spec_text, store, expected", [
    ("name: typo\nphases:\n  - name: p\n    comands: []\n", None, "did you mean 'commands'"),
    ("name: ok\nphases:\n  - name: p\n    commands: [{name: c, run: 'true'}]\n", "no-such-store",
     "no CheckpointStore block named 'no-such-store'"),
])
def test_a_users_mistake_ends_the_run_failed_invalid_parameters_in_one_line_without_raising(
    tmp_path: Path, spec_text: str, store: str | None, expected: str
) -> None:
    from flows.benchmark import benchmark

    spec = tmp_path / "bench.yaml"
    spec.write_text(spec_text)
    state = benchmark(spec_path=str(spec), store=store or str(tmp_path / "store"), return_state=True)
    assert state.is_failed() and state.name == "InvalidParameters", state
    assert state.message.startswith(f"benchmark {spec}: invalid parameters: ") and expected in state.message


def test_a_command_that_checkpoints_itself_keeps_only_the_store_blocks_keep_last(tmp_path: Path) -> None:
    import sys
    import uuid

    from grd_blocks.checkpoint import CheckpointEngine
    from grd_blocks.prefect_edge.block import CheckpointStore

    name = f"keep-three-{uuid.uuid4().hex[:6]}"
    CheckpointStore(url=str(tmp_path / "store"), keep_last=3).save(name)
    spec = tmp_path / "bench.yaml"
    spec.write_text(
        "name: retention\nphases:\n  - name: p\n    commands:\n      - name: fit\n"
        f"        run: [{sys.executable}, -c, "
        "\"from grd_blocks.checkpoint import RunCheckpoints as R; r = R.from_env(); "
        "[r.save({'epoch': e}, epoch=e) for e in range(1, 11)]\"]\n")
    from flows.benchmark import benchmark

    state = benchmark(spec_path=str(spec), run_key="kept", store=name, report_path=str(tmp_path / "r.json"),
                      return_state=True)
    assert state.is_completed(), state
    own = CheckpointEngine(str(tmp_path / "store")).run("kept").child("commands").child("p.fit")
    assert [ref.index for ref in own.checkpoints()] == [8, 9, 10]  # 10 epochs saved, keep_last=3 kept
