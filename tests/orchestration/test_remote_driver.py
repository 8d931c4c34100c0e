"""A try whose task had ended when its message stream broke is read, not lost: its answer (with the whole log
the worker kept) makes the row, and no second try is made; a stream that breaks while the task still runs is
a lost try. The transport here is a fake, on purpose: "the stream breaks in the instant the task ends" is a
fault no real Dask or Ray cluster can be made to produce on demand (the real transports are tested against
real clusters in test_dask_* and test_ray_*)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grd_blocks.orchestration.execute import CommandPlan
from grd_blocks.orchestration.remote import Lost, NotStarted, Ran, RemoteRequest
from grd_blocks.orchestration.remote_driver import RemoteDriver, TryView
from grd_blocks.orchestration.run import BenchmarkRun
from grd_blocks.orchestration.status import Status
from grd_blocks.process.outcome import CommandOutcome
from grd_blocks.spec import parse_spec

SPEC = """
name: remote
phases:
  - name: p
    timeout: 60s
    commands:
      - {name: c, run: "echo hi"}
"""
WORKER_LOG = b"hi\nthe last line, which never streamed\n"


@dataclass
class _Target:
    attempts: int = 1


@dataclass
class _BrokenStream(RemoteDriver[int]):
    """Every try's task ends at once; its message stream is broken (``take`` says why)."""

    ended: bool = True
    engine = "Fake"
    kind = "fake worker"
    topic: str = "fake"
    submitted: list[str] = field(default_factory=list)

    def target(self, plan: CommandPlan) -> _Target:
        return _Target(attempts=1)

    def submit(self, plan: CommandPlan, request: RemoteRequest) -> int:
        self.submitted.append(request.token)
        return len(self.submitted)

    def done(self, handle: int) -> bool:
        return self.ended

    def take(self, request: RemoteRequest, handle: int, wait_s: float) -> list[dict[str, Any]] | str:
        return "the message stream broke"

    def send_stop(self, request: RemoteRequest, reason: str) -> None:
        pass

    def cancel(self, handle: int) -> None:
        self.ended = True  # a cancelled task ends

    def result(self, handle: int, seen: TryView) -> Ran | NotStarted | Lost | str:
        outcome = CommandOutcome(returncode=0, timed_out=False, cancelled=False, elapsed_s=0.1,
                                 term_sent_s=None, kill_sent_s=None, survivors=0, stdout_tail="hi\n",
                                 stderr_tail="", log_path="/on/the/worker.log", containment="namespace",
                                 spawn_error=None)
        return Ran(outcome, stop_marked=False, host="node-1", worker="w-1", log=WORKER_LOG, log_kept=None,
                   lines=2)

    def forget(self, request: RemoteRequest) -> None:
        pass


def _plan(tmp_path: Path) -> CommandPlan:
    run = BenchmarkRun(spec=parse_spec(SPEC), run_key="remote-1", logs_dir=tmp_path / "logs")
    phase_run = run.begin_phase(run.plan.phase("p"))
    return run.dispatch(phase_run, phase_run.phase.command("c"))


def test_a_try_that_ended_as_its_stream_broke_is_read_with_its_whole_log_and_not_tried_again(
    tmp_path: Path,
) -> None:
    driver = _BrokenStream()
    plan = _plan(tmp_path)
    row = driver.run(plan)
    assert row.status is Status.COMPLETED and row.note is None, (row.status, row.reason, row.note)
    assert row.host == "node-1" and len(driver.submitted) == 1
    assert Path(row.log_path or "").read_bytes() == WORKER_LOG


def test_a_stream_that_breaks_while_the_task_runs_is_a_lost_try(tmp_path: Path) -> None:
    driver = _BrokenStream(ended=False)
    row = driver.run(_plan(tmp_path))
    assert row.status is Status.FAILED and len(driver.submitted) == 1
    assert row.reason is not None and "the message stream broke" in row.reason
    assert "not run again: it had 1 tries (runner.attempts)" in row.reason
