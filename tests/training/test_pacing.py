"""Pacer: saves and stops while one more step plus a save still fits before the deadline (fake clock)."""

from __future__ import annotations

import math

import pytest

from grd_blocks.budget import Budget, FakeClock
from grd_blocks.errors import ConfigError
from grd_blocks.training import DurationEstimate, Pacer


def test_estimate_believes_a_slow_outlier_at_once() -> None:
    est = DurationEstimate(prior=9.0)
    assert est.value == 9.0
    for seconds in (1.0, 1.0, 5.0):
        est.observe(seconds)
    assert est.value == 5.0


def test_stops_when_one_more_step_and_a_save_would_not_fit() -> None:
    clock = FakeClock()
    pacer = Pacer(clock() + 10.0, clock=clock, initial_save_s=1.0, safety=1.5, margin_s=0.0, exit_s=0.0)
    pacer.step.observe(2.0)
    clock.advance(5.0)  # 5s left, needs 1.5 * (2 + 1) = 4.5
    assert not pacer.should_stop()
    clock.advance(1.0)  # 4s left
    assert pacer.should_stop()


def test_no_deadline_never_stops() -> None:
    pacer = Pacer(math.inf)
    pacer.step.observe(1e9)
    assert not pacer.should_stop()


def test_env_budget_and_explicit_deadline_take_the_earliest() -> None:
    clock = FakeClock()
    pacer = Pacer.from_sources(
        deadline=clock() + 100, time_left_s=50, environ={"GRD_TIME_LEFT_S": "20"}, clock=clock
    )
    assert pacer.remaining() == pytest.approx(20)


def test_a_budget_counts_its_parents_deadline() -> None:
    clock = FakeClock()
    parent = Budget.after(3.0, name="benchmark", level="benchmark", clock=clock)
    child = parent.child(100.0, name="train", level="command")
    pacer = Pacer.from_sources(budget=child, clock=clock, initial_save_s=0.5)
    assert pacer.remaining() == pytest.approx(3.0)
    clock.advance(2.5)
    assert pacer.should_stop()


def test_bad_env_budget_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="GRD_TIME_LEFT_S"):
        Pacer.from_sources(environ={"GRD_TIME_LEFT_S": "soon"})


def test_the_time_to_exit_after_the_save_is_part_of_the_margin() -> None:
    clock = FakeClock()
    pacer = Pacer(clock() + 10.0, clock=clock, initial_save_s=1.0, safety=1.5, margin_s=0.0, exit_s=2.0)
    pacer.step.observe(2.0)
    clock.advance(3.0)  # 7s left, needs 1.5 * (2 + 1) + 2 = 6.5
    assert not pacer.should_stop()
    clock.advance(1.0)  # 6s left: a save would fit, the exit after it would not
    assert pacer.should_stop()
    assert "exit 2.00s" in pacer.describe()


def test_the_exit_allowance_comes_from_grd_exit_s_and_counts_only_for_a_command_under_grd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRD_EXIT_S", "1.25")
    assert Pacer().exit_s == 1.25
    monkeypatch.setenv("GRD_EXIT_S", "soon")
    with pytest.raises(ConfigError, match="GRD_EXIT_S='soon'"):
        Pacer()
    monkeypatch.delenv("GRD_EXIT_S")
    monkeypatch.setenv("GRD_RUN_KEY", "r1")
    assert Pacer().exit_s == 0.5  # a command's process must also leave before its deadline
    monkeypatch.delenv("GRD_RUN_KEY")
    assert Pacer().exit_s == 0.0  # training inside a flow process does not exit it


def test_grds_absolute_deadline_wins_so_start_up_time_counts_against_the_budget() -> None:
    import time

    # grd gave 30 s when it started the process; 20 s went to start-up (interpreter, torch import).
    # (rounded down to the millisecond: rounding to nearest could put the deadline up to 0.5 ms past 10 s)
    deadline = math.floor((time.time() + 10.0) * 1000) / 1000
    environ = {"GRD_DEADLINE_UNIX": f"{deadline:.3f}", "GRD_TIME_LEFT_S": "30.000"}
    pacer = Pacer.from_sources(environ=environ)
    assert 9.0 < pacer.remaining() <= 10.0
    assert Pacer.from_sources(environ={"GRD_DEADLINE_UNIX": "inf"}).remaining() == math.inf
    with pytest.raises(ConfigError, match="GRD_DEADLINE_UNIX='soon'"):
        Pacer.from_sources(environ={"GRD_DEADLINE_UNIX": "soon"})
