"""The deadline engine: nesting, shielding, cancellation and binding, on a fake clock (no sleeps)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grd_blocks.budget import Budget, FakeClock
from grd_blocks.errors import BudgetError, GrdError

timeouts = st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False))
steps = st.floats(min_value=0, max_value=1e5, allow_nan=False)


@dataclass
class Node:
    budget: Budget
    parent: Node | None


@st.composite
def trees(draw: st.DrawFn) -> tuple[FakeClock, list[Node]]:
    """A random budget tree built over time: each node a child of an earlier one; the clock moves between."""
    clock = FakeClock()
    nodes = [Node(Budget.after(draw(timeouts), name="root", level="benchmark", clock=clock), None)]
    for i in range(draw(st.integers(min_value=1, max_value=8))):
        clock.advance(draw(steps))
        parent = nodes[draw(st.integers(min_value=0, max_value=len(nodes) - 1))]
        child = parent.budget.child(draw(timeouts), name=f"n{i}", level="x", shield=draw(st.booleans()))
        nodes.append(Node(child, parent))
    return clock, nodes


def test_after_is_at_clock_plus_seconds() -> None:
    clock = FakeClock(500.0)
    budget = Budget.after(30, name="b", level="benchmark", clock=clock)
    assert budget.own_deadline == 530.0
    assert budget.effective_deadline == 530.0
    assert budget.started_at == 500.0
    assert budget.configured_s == 30.0
    clock.advance(12.5)
    assert budget.remaining() == 17.5
    assert budget.elapsed() == 12.5


def test_at_records_configured_seconds_from_start() -> None:
    clock = FakeClock(100.0)
    budget = Budget.at(160.0, clock=clock)
    assert budget.configured_s == 60.0
    assert Budget.at(math.inf, clock=clock).configured_s is None


def test_unlimited_budget_never_expires_but_can_be_cancelled() -> None:
    clock = FakeClock()
    budget = Budget.unlimited(clock=clock)
    clock.advance(1e9)
    assert budget.remaining() == math.inf
    assert budget.configured_s is None
    assert not budget.expired()
    budget.cancel("user pressed stop")
    assert budget.expired()
    assert budget.remaining() == math.inf  # cancellation never rewrites time


def test_none_and_inf_seconds_mean_no_limit() -> None:
    clock = FakeClock()
    assert Budget.after(None, clock=clock).remaining() == math.inf
    assert Budget.after(math.inf, clock=clock).remaining() == math.inf


def test_budget_expires_exactly_at_its_deadline() -> None:
    clock = FakeClock()
    budget = Budget.after(10, clock=clock)
    clock.advance(9.999)
    assert not budget.expired()
    clock.advance(0.001)
    assert budget.expired()
    assert budget.remaining() == 0.0
    clock.advance(100)
    assert budget.remaining() == 0.0


def test_zero_timeout_is_expired_at_once() -> None:
    assert Budget.after(0, clock=FakeClock()).expired()


def test_child_inherits_earlier_parent_deadline_and_names_it_binding() -> None:
    clock = FakeClock(0.0)
    bench = Budget.after(100, name="nightly", level="benchmark", clock=clock)
    clock.advance(70)
    phase = bench.child(60, name="train", level="phase")
    command = phase.child(10, name="fit", level="command")
    assert phase.effective_deadline == 100.0
    assert phase.remaining() == 30.0
    assert phase.binding() is bench
    assert phase.inherited()
    assert command.effective_deadline == 80.0
    assert command.binding() is command
    assert not command.inherited()
    clock.advance(15)
    late = phase.child(600, name="eval", level="command")
    assert late.remaining() == 15.0
    assert late.binding() is bench
    assert late.binding().level == "benchmark"


def test_equal_deadlines_bind_the_nearest_level() -> None:
    clock = FakeClock(0.0)
    parent = Budget.after(10, level="phase", clock=clock)
    child = parent.child(10, name="c", level="command")
    assert child.binding() is child
    assert not child.inherited()


def test_shielded_child_ignores_parent_deadline_and_cancel() -> None:
    clock = FakeClock(0.0)
    bench = Budget.after(5, name="b", level="benchmark", clock=clock)
    clock.advance(10)
    assert bench.expired()
    bench.cancel("timed out")
    cleanup = bench.child(30, name="cleanup", level="cleanup", shield=True)
    assert cleanup.effective_deadline == 40.0
    assert cleanup.remaining() == 30.0
    assert not cleanup.cancelled
    assert not cleanup.expired()
    assert cleanup.binding() is cleanup
    # below the shield, nesting works again
    inner = cleanup.child(100, name="rm", level="command")
    assert inner.effective_deadline == 40.0
    assert inner.binding() is cleanup


def test_cancel_propagates_to_existing_and_later_unshielded_descendants() -> None:
    clock = FakeClock()
    root = Budget.after(None, name="root", clock=clock)
    phase = root.child(None, name="p", level="phase")
    command = phase.child(None, name="c", level="command")
    shielded = phase.child(None, name="s", level="cleanup", shield=True)
    phase.cancel("stop_phase")
    later = phase.child(None, name="later", level="command")
    assert command.cancelled and later.cancelled
    assert command.cancel_reason == "stop_phase"
    assert command.cancel_origin() is phase
    assert not root.cancelled
    assert not shielded.cancelled
    assert shielded.cancel_reason == ""


def test_cancel_is_idempotent_and_keeps_first_reason() -> None:
    budget = Budget.unlimited(clock=FakeClock())
    budget.cancel("first")
    budget.cancel("second")
    assert budget.cancelled
    assert budget.cancel_reason == "first"


def test_cancel_from_another_thread_is_seen() -> None:
    budget = Budget.after(None, clock=FakeClock())
    child = budget.child(None, name="c", level="command")
    worker = threading.Thread(target=budget.cancel, args=("from worker",))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert child.cancelled
    assert child.cancel_reason == "from worker"


def test_concurrent_cancels_keep_exactly_one_reason() -> None:
    budget = Budget.unlimited(clock=FakeClock())
    leaves = [budget.child(None, name=f"c{i}", level="command") for i in range(50)]
    barrier = threading.Barrier(8)

    def cancel(i: int) -> None:
        barrier.wait(timeout=10)
        budget.cancel(f"reason {i}")
        for leaf in leaves:
            leaf.cancelled  # noqa: B018 - reads race with the other threads' writes

    threads = [threading.Thread(target=cancel, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert budget.cancel_reason in {f"reason {i}" for i in range(8)}
    assert all(leaf.cancel_reason == budget.cancel_reason for leaf in leaves)


def test_child_runs_on_parent_clock() -> None:
    clock = FakeClock()
    parent = Budget.after(10, clock=clock)
    assert parent.child(5, name="c", level="command").clock is clock
    assert Budget.after(5, parent=parent).clock is clock


def test_wall_clock_jump_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monotonic = FakeClock(50.0)
    monkeypatch.setattr(time, "monotonic", monotonic)
    budget = Budget.after(60)  # default clock: time.monotonic, read through the module attribute
    child = budget.child(30, name="c", level="command")
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)  # the wall clock jumps decades ahead
    assert budget.remaining() == 60.0
    assert child.remaining() == 30.0
    monkeypatch.setattr(time, "time", lambda: 0.0)  # and back before 1970
    assert not child.expired()
    monotonic.advance(30)
    assert child.expired()


@pytest.mark.parametrize("bad", [-1, -0.001, -math.inf])
def test_negative_timeout_is_a_budget_error_naming_value_and_fix(bad: float) -> None:
    with pytest.raises(BudgetError) as err:
        Budget.after(bad, name="train", clock=FakeClock())
    message = str(err.value)
    assert repr(bad) in message
    assert "'train'" in message
    assert "negative" in message
    assert "None for no limit" in message
    assert isinstance(err.value, GrdError) and isinstance(err.value, ValueError)


def test_nan_timeout_is_a_budget_error() -> None:
    with pytest.raises(BudgetError, match="NaN"):
        Budget.after(math.nan, clock=FakeClock())
    with pytest.raises(BudgetError, match="NaN"):
        Budget.unlimited(clock=FakeClock()).child(math.nan, name="c", level="command")


@pytest.mark.parametrize("bad", ["5m", True, [1]])
def test_non_number_timeout_is_a_budget_error(bad: object) -> None:
    with pytest.raises(BudgetError, match="not a number of seconds"):
        Budget.after(bad, clock=FakeClock())  # type: ignore[arg-type]


def test_nan_deadline_is_a_budget_error() -> None:
    with pytest.raises(BudgetError, match="not an absolute time"):
        Budget.at(math.nan, clock=FakeClock())


def test_fake_clock_refuses_to_go_backwards() -> None:
    clock = FakeClock()
    with pytest.raises(BudgetError, match="only moves forward"):
        clock.advance(-1)


# --- properties ------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(trees())
def test_child_budget_never_outlives_parent(tree: tuple[FakeClock, list[Node]]) -> None:
    _, nodes = tree
    for node in nodes:
        if node.parent is not None and not node.budget.shield:
            assert node.budget.effective_deadline <= node.parent.budget.effective_deadline
            assert node.budget.remaining() <= node.parent.budget.remaining()
        assert node.budget.effective_deadline <= node.budget.own_deadline


@settings(max_examples=200, deadline=None)
@given(trees(), st.lists(steps, max_size=10))
def test_remaining_never_increases(tree: tuple[FakeClock, list[Node]], advances: list[float]) -> None:
    clock, nodes = tree
    before = [n.budget.remaining() for n in nodes]
    for step in advances:
        clock.advance(step)
        now = [n.budget.remaining() for n in nodes]
        assert all(b >= a for a, b in zip(now, before, strict=True))
        assert all(r >= 0 for r in now)
        before = now


@settings(max_examples=200, deadline=None)
@given(trees())
def test_inherited_iff_an_ancestor_deadline_is_earlier(tree: tuple[FakeClock, list[Node]]) -> None:
    _, nodes = tree
    for node in nodes:
        budget = node.budget
        earlier = (
            budget.parent is not None
            and not budget.shield
            and budget.parent.effective_deadline < budget.own_deadline
        )
        assert budget.inherited() == earlier
        binding = budget.binding()
        assert binding.own_deadline == budget.effective_deadline
        # the binding budget is self or an ancestor reached without crossing a shield
        walk: Budget | None = budget
        while walk is not binding:
            assert walk is not None and not walk.shield
            walk = walk.parent


@settings(max_examples=200, deadline=None)
@given(trees(), st.data())
def test_cancel_reaches_exactly_the_unshielded_descendants(
    tree: tuple[FakeClock, list[Node]], data: st.DataObject
) -> None:
    _, nodes = tree
    target = nodes[data.draw(st.integers(min_value=0, max_value=len(nodes) - 1))]
    target.budget.cancel("test")
    for node in nodes:
        walk: Node | None = node
        reached = False
        while walk is not None:
            if walk is target:
                reached = True
                break
            if walk.budget.shield:
                break
            walk = walk.parent
        assert node.budget.cancelled == reached
        assert node.budget.expired() or not reached


@settings(max_examples=100, deadline=None)
@given(timeouts, timeouts, steps)
def test_shielded_child_deadline_is_its_own(
    parent_s: float | None, child_s: float | None, wait: float
) -> None:
    clock = FakeClock()
    parent = Budget.after(parent_s, clock=clock)
    clock.advance(wait)
    child = parent.child(child_s, name="cleanup", level="cleanup", shield=True)
    assert child.effective_deadline == child.own_deadline
    assert child.binding() is child
