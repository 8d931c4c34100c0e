"""on_timeout policy, budget expiry and cancellation decide what is skipped; a stop never reopens."""

from __future__ import annotations

from grd_blocks.budget import Budget
from grd_blocks.orchestration.policy import RunGate
from grd_blocks.orchestration.status import Status


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gates(clock: FakeClock, phase_s: float | None = None) -> tuple[RunGate, Budget]:
    bench = Budget.after(100, name="b", level="benchmark", clock=clock)
    return RunGate(bench), bench.child(phase_s, name="p", level="phase")


def test_continue_keeps_running_after_a_timeout() -> None:
    run, budget = _gates(FakeClock())
    phase = run.phase(budget)
    phase.observe("p", "a", Status.TIMEOUT, "continue")
    assert phase.skip() is None and run.skip() is None


def test_stop_phase_skips_the_rest_of_the_phase_but_not_the_next_phase() -> None:
    run, budget = _gates(FakeClock())
    phase = run.phase(budget)
    phase.observe("p", "a", Status.TIMEOUT, "stop_phase")
    skip = phase.skip()
    assert skip is not None and skip.status is Status.SKIPPED and "stop_phase after 'p.a'" in skip.reason
    following = run.budget.child(None, name="q", level="phase")
    assert run.skip() is None and run.phase(following).skip() is None and not following.cancelled


def test_stop_phase_stops_the_phases_running_commands_but_not_its_cleanups() -> None:
    run, budget = _gates(FakeClock())
    phase = run.phase(budget)
    sibling = budget.child(60, name="b", level="command")  # still running when 'a' timed out
    cleanup = budget.child(60, name="c", level="command", shield=True)
    phase.observe("p", "a", Status.TIMEOUT, "stop_phase")
    assert sibling.cancelled and sibling.cancel_reason == "on_timeout=stop_phase after 'p.a' timed out"
    assert not cleanup.cancelled and not run.budget.cancelled


def test_stop_benchmark_skips_every_later_phase() -> None:
    run, budget = _gates(FakeClock())
    run.phase(budget).observe("p", "a", Status.TIMEOUT, "stop_benchmark")
    later = run.skip()
    assert later is not None and later.status is Status.SKIPPED and "stop_benchmark" in later.reason


def test_failures_do_not_trigger_on_timeout() -> None:
    run, budget = _gates(FakeClock())
    phase = run.phase(budget)
    phase.observe("p", "a", Status.FAILED, "stop_benchmark")
    assert phase.skip() is None and run.skip() is None


def test_an_expired_phase_budget_skips_and_marks_the_phase_expired() -> None:
    clock = FakeClock()
    run, budget = _gates(clock, phase_s=2)
    phase = run.phase(budget)
    assert phase.skip() is None
    clock.now += 2
    skip = phase.skip()
    assert skip is not None and skip.budget_expired and "phase 'p' budget" in skip.reason
    assert phase.budget_expired
    assert run.skip() is None


def test_cancellation_marks_unstarted_commands_cancelled() -> None:
    clock = FakeClock()
    bench = Budget.after(100, name="b", level="benchmark", clock=clock)
    run = RunGate(bench)
    bench.cancel("the run was stopped")
    skip = run.phase(bench.child(None, name="p", level="phase")).skip()
    assert skip is not None and skip.status is Status.CANCELLED
