"""What the fan-out tests (Dask and Ray) share: a runner that runs each unit where it is called and keeps what
streamed back, a spec run to its report (here or in a thread the test can interrupt or outlive), and the
engine process that runs a command, found from the command's own process by its parent chain in /proc
(independent of grd and of the engine)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from grd_blocks.orchestration.benchmark import (
    BenchmarkRun,
    CommandPlan,
    PhasePlan,
    execute,
    run_benchmark,
)
from grd_blocks.orchestration.status import Status
from grd_blocks.report import BenchmarkReport, CommandReport, PhaseReport
from grd_blocks.spec import parse_spec
from tests.process.helpers import TREE_CHILD, marked, parent

STOP_WAIT_S = 30.0  # bound on the waits for a ladder that runs on its own (never a timed assertion)


class Direct:
    """Runs each unit where it is called; collects every output line that streamed back, by command."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def phase(
        self, phase: PhasePlan, backstop_s: float | None, body: Callable[[], PhaseReport]
    ) -> PhaseReport:
        return body()

    def command(self, plan: CommandPlan, backstop_s: float | None) -> CommandReport:
        return execute(plan, on_line=lambda stream, line: self.lines.append((plan.label, stream, line)))


def run_spec(tmp_path: Path, spec: str, *, clock: Callable[[], float] = time.monotonic,
             runner: Direct | None = None, key: str = "fanout-1") -> tuple[BenchmarkReport, Direct]:
    """Run ``spec`` to its report in this thread."""
    runner = runner or Direct()
    run = BenchmarkRun(spec=parse_spec(spec, base_dir=tmp_path), run_key=key, logs_dir=tmp_path / "logs",
                       clock=clock)
    finished = run_benchmark(run, runner, report_path=tmp_path / "report.json")
    return finished.report, runner


@dataclass
class Background:
    """A spec run in a thread of its own: its report once it ended."""

    thread: threading.Thread
    reports: list[BenchmarkReport]

    def row(self, timeout: float = STOP_WAIT_S * 4) -> CommandReport:
        """The first command's row, once the run ended (``AssertionError`` if it did not within
        ``timeout``: a hang)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive() and self.reports, "the run did not end"
        return self.reports[0].phases[0].commands[0]


def run_in_background(tmp_path: Path, spec: str, *, key: str,
                      clock: Callable[[], float] = time.monotonic) -> Background:
    """Start ``spec`` in a thread (the test meanwhile kills or stops what it runs on)."""
    reports: list[BenchmarkReport] = []
    thread = threading.Thread(
        target=lambda: reports.append(run_spec(tmp_path, spec, clock=clock, key=key)[0]))
    thread.start()
    return Background(thread, reports)


def tree(pid_dir: Path, *kinds: str) -> str:
    """``tree_child.py``'s argv as a YAML flow list's items."""
    return ", ".join(f"'{item}'" for item in [sys.executable, TREE_CHILD, str(pid_dir), *kinds])


def ancestor_in(pids: Iterable[int], candidates: Iterable[int]) -> int:
    """The one of ``candidates`` that is an ancestor of one of ``pids`` (read from /proc)."""
    wanted = set(candidates)
    for pid in pids:
        found: int | None = pid
        while found is not None and found > 1:
            if found in wanted:
                return found
            found = parent(found)
    raise AssertionError(f"none of {sorted(wanted)} is an ancestor of {list(pids)}")


def gated_commands(gate: Path, count: int) -> str:
    """``count`` commands (a YAML list's items) that each wait until all of them run, writing a line to
    stdout and one to stderr before and one after: only ``count`` slots at once can finish them."""
    wait_all = (f'touch {gate}/$GRD_COMMAND; echo "on $GRD_COMMAND"; echo err-$GRD_COMMAND >&2; '
                f'while [ "$(ls {gate} | wc -l)" -lt {count} ]; do sleep 0.05; done; printf "done\\n"')
    return "\n".join(f"      - {{name: c{i}, run: '{wait_all}'}}" for i in range(count))


def assert_gated_rows_streamed_and_kept(report: BenchmarkReport, runner: Direct, tmp_path: Path) -> None:
    """Every row of ``gated_commands`` (phase ``wide``) COMPLETED on its first try on this machine's host, its
    output streamed while it ran and its log the worker's, byte for byte."""
    rows = report.phases[0].commands
    assert [row.status for row in rows] == [Status.COMPLETED] * len(rows), [row.reason for row in rows]
    assert {row.host for row in rows} == {socket.gethostname()}
    for i, row in enumerate(rows):
        assert row.returncode == 0 and row.attempts == 1 and row.note is None
        assert row.attempt_logs == [row.log_path] and row.log_path.startswith(str(tmp_path / "logs"))
        assert f"on c{i}" in row.stdout_tail and f"err-c{i}" in row.stderr_tail
        log = Path(row.log_path or "").read_bytes()  # the worker's log, byte for byte
        assert sorted(log.splitlines(keepends=True)) == sorted([f"on c{i}\n".encode(), f"err-c{i}\n".encode(),
                                                                b"done\n"])
        streamed = [(stream, line) for label, stream, line in runner.lines if label == f"wide.c{i}"]
        assert ("stdout", f"on c{i}") in streamed and ("stderr", f"err-c{i}") in streamed
        assert ("stdout", "done") in streamed


def assert_own_deadline_left_no_survivors(row: CommandReport, pid_dir: Path) -> None:
    """The command's own deadline stopped its TERM-ignoring tree with SIGKILL after the grace, and /proc holds
    nothing of it."""
    assert (pid_dir / "ready").exists(), "the tree was not built before its deadline (machine too loaded?)"
    assert row.status is Status.TIMEOUT and row.timeout is not None, (row.status, row.reason, row.note)
    assert row.timeout.level == "command" and row.timeout.stopped_by == "grd"
    assert row.timeout.term_sent_s is not None and row.timeout.kill_sent_s is not None  # TERM was ignored
    assert row.timeout.survivors == 0 and marked(str(pid_dir)) == []
    assert row.host == socket.gethostname()


def assert_drivers_deadline_left_no_survivors(row: CommandReport, pid_dir: Path) -> None:
    """The phase's deadline on the driver stopped the remote tree down to SIGKILL, and /proc holds nothing of
    it."""
    assert row.status is Status.TIMEOUT and row.timeout is not None, (row.status, row.reason, row.note)
    assert row.timeout.level == "phase" and row.timeout.inherited
    assert row.timeout.kill_sent_s is not None and row.timeout.survivors == 0
    assert marked(str(pid_dir)) == []


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tree_on_first_try(tmp_path: Path, pid_dir: Path) -> str:
    """A shell command whose first try builds a tree (TERM-ignoring, setsid and child members) and whose
    later tries print ``second try`` and exit 0 (its mark of the first try is in ``tmp_path``)."""
    first = tmp_path / "first-try"
    return (f"if [ -e {first} ]; then echo second try; exit 0; fi; touch {first}; "
            f"exec {sys.executable} {TREE_CHILD} {pid_dir} ignore_term setsid child")
