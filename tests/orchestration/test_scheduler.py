"""max_parallel scheduling: spec order kept, stops skip unstarted commands, interruptions cancel and join."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass

import pytest

from grd_blocks.orchestration.policy import Skip
from grd_blocks.orchestration.scheduler import run_commands
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CommandReport


@dataclass(frozen=True)
class Cmd:
    name: str


class Gate:
    def __init__(self) -> None:
        self.stopped: str | None = None

    def skip(self) -> Skip | None:
        return None if self.stopped is None else Skip(Status.SKIPPED, self.stopped)


def _ok(cmd: Cmd) -> CommandReport:
    return CommandReport(name=cmd.name, status=Status.COMPLETED, returncode=0, attempts=1)


def test_max_parallel_runs_commands_at_the_same_time() -> None:
    barrier = threading.Barrier(3, timeout=30)

    def start(cmd: Cmd) -> CommandReport:
        barrier.wait()  # passes only if all three run at once
        return _ok(cmd)

    rows = run_commands([Cmd("a"), Cmd("b"), Cmd("c")], start=start, gate=Gate(), on_interrupt=lambda: None,
                        max_parallel=3)
    assert [r.name for r in rows] == ["a", "b", "c"]
    assert {r.status for r in rows} == {Status.COMPLETED}


def test_sequential_phase_never_overlaps_commands() -> None:
    running = []
    overlaps = []
    lock = threading.Lock()

    def start(cmd: Cmd) -> CommandReport:
        with lock:
            running.append(cmd.name)
            overlaps.append(len(running) > 1)
        with lock:
            running.remove(cmd.name)
        return _ok(cmd)

    run_commands([Cmd(str(i)) for i in range(20)], start=start, gate=Gate(), on_interrupt=lambda: None)
    assert overlaps == [False] * 20


def test_commands_after_a_stop_are_skipped_and_never_started() -> None:
    gate = Gate()
    started: list[str] = []

    def start(cmd: Cmd) -> CommandReport:
        started.append(cmd.name)
        if cmd.name == "b":
            gate.stopped = "on_timeout=stop_phase after 'p.b' timed out"
            return CommandReport(name="b", status=Status.TIMEOUT)
        return _ok(cmd)

    commands = [Cmd("a"), Cmd("b"), Cmd("c"), Cmd("d")]
    rows = run_commands(commands, start=start, gate=gate, on_interrupt=lambda: None)
    assert started == ["a", "b"]
    assert [r.status for r in rows] == [Status.COMPLETED, Status.TIMEOUT, Status.SKIPPED, Status.SKIPPED]
    assert rows[3].reason == "on_timeout=stop_phase after 'p.b' timed out"


def test_reused_rows_are_not_started_again() -> None:
    started: list[str] = []

    def start(cmd: Cmd) -> CommandReport:
        started.append(cmd.name)
        return _ok(cmd)

    def reuse(cmd: Cmd) -> CommandReport | None:
        return _ok(cmd).model_copy(update={"resumed": True}) if cmd.name == "a" else None

    rows = run_commands([Cmd("a"), Cmd("b")], start=start, gate=Gate(), on_interrupt=lambda: None,
                        reuse=reuse)
    assert started == ["b"] and rows[0].resumed and not rows[1].resumed


def test_a_crashing_start_becomes_a_failed_row_not_a_lost_command() -> None:
    def start(cmd: Cmd) -> CommandReport:
        raise RuntimeError("boom")

    [row] = run_commands([Cmd("a")], start=start, gate=Gate(), on_interrupt=lambda: None)
    assert row.status is Status.FAILED and "boom" in (row.reason or "")


def test_an_interruption_sets_cancel_and_joins_running_commands_first() -> None:
    cancel = threading.Event()
    finished: list[str] = []

    def start(cmd: Cmd) -> CommandReport:
        if cmd.name == "slow":
            assert cancel.wait(30), "cancel was never set"
        finished.append(cmd.name)
        return _ok(cmd)

    def done(cmd: Cmd, row: CommandReport) -> None:
        if cmd.name == "fast":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_commands([Cmd("slow"), Cmd("fast")], start=start, gate=Gate(), on_interrupt=cancel.set,
                     max_parallel=2, done=done)
    assert cancel.is_set() and sorted(finished) == ["fast", "slow"]


class _Interrupted(Exception):
    """What the test's signal handler raises in the waiting thread (a Ctrl-C or a backstop, as Prefect's)."""


def test_an_interrupted_waiting_thread_cancels_the_running_command_joins_it_and_starts_no_other() -> None:
    cancel = threading.Event()
    started: list[str] = []
    finished: list[str] = []
    waiting_thread = threading.main_thread().ident
    assert threading.get_ident() == waiting_thread  # signal handlers run in the main thread only

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    def start(cmd: Cmd) -> CommandReport:
        started.append(cmd.name)
        assert waiting_thread is not None
        signal.pthread_kill(waiting_thread, signal.SIGUSR1)  # the waiting thread is interrupted now
        assert cancel.wait(30), "cancel was never set"
        finished.append(cmd.name)
        return _ok(cmd)

    before = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with pytest.raises(_Interrupted):
            run_commands([Cmd("a"), Cmd("b"), Cmd("c")], start=start, gate=Gate(), on_interrupt=cancel.set)
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert cancel.is_set()
    assert started == ["a"] and finished == ["a"]  # joined before the interruption propagated; b, c never ran
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("grd-command")]


def test_a_sequential_phase_runs_every_command_in_one_thread_with_no_hand_off() -> None:
    threads: list[int] = []

    def start(cmd: Cmd) -> CommandReport:
        threads.append(threading.get_ident())
        return _ok(cmd)

    def done(cmd: Cmd, row: CommandReport) -> None:
        threads.append(threading.get_ident())

    rows = run_commands([Cmd(str(i)) for i in range(10)], start=start, gate=Gate(), on_interrupt=lambda: None,
                        done=done)
    assert len(rows) == 10 and len(threads) == 20
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident()
