"""Precedence: command > phase > defaults > benchmark (grace) > built-in, key by key."""

from __future__ import annotations

import itertools

import pytest

from grd_blocks.spec import BUILTIN_GRACE_S, BUILTIN_ON_TIMEOUT, ResolvedCommand, parse_spec, resolve_command


def spec_text(*, command: str = "", phase: str = "", defaults: str = "", top: str = "") -> str:
    return (
        "name: prec\n"
        + top
        + (f"defaults: {{{defaults}}}\n" if defaults else "")
        + "phases:\n  - name: p\n"
        + (f"    {phase}\n" if phase else "")
        + "    commands:\n      - {name: c, run: 'true'"
        + (f", {command}" if command else "")
        + "}\n"
    )


def resolve(**parts: str) -> ResolvedCommand:
    spec = parse_spec(spec_text(**parts))
    phase = spec.phases[0]
    return resolve_command(spec, phase, phase.commands[0])


def test_nothing_set_gives_built_ins() -> None:
    assert resolve() == ResolvedCommand(
        timeout_s=None, grace_s=BUILTIN_GRACE_S, on_timeout=BUILTIN_ON_TIMEOUT
    )
    assert BUILTIN_GRACE_S == 5.0 and BUILTIN_ON_TIMEOUT == "continue"


def test_command_beats_phase_beats_defaults_beats_benchmark_for_grace() -> None:
    levels = {"command": "grace: 1s", "phase": "grace: 2s", "defaults": "grace: 3s", "top": "grace: 4s\n"}
    expected = {"command": 1.0, "phase": 2.0, "defaults": 3.0, "top": 4.0}
    order = ["command", "phase", "defaults", "top"]
    for size in range(1, 5):
        for chosen in itertools.combinations(order, size):
            got = resolve(**{level: levels[level] for level in chosen}).grace_s
            assert got == expected[min(chosen, key=order.index)], chosen


def test_command_beats_phase_beats_defaults_for_on_timeout() -> None:
    assert (
        resolve(
            command="on_timeout: stop_benchmark",
            phase="on_timeout: stop_phase",
            defaults="on_timeout: continue",
        ).on_timeout
        == "stop_benchmark"
    )
    assert (
        resolve(phase="on_timeout: stop_phase", defaults="on_timeout: stop_benchmark").on_timeout
        == "stop_phase"
    )
    assert resolve(defaults="on_timeout: stop_benchmark").on_timeout == "stop_benchmark"


def test_command_timeout_falls_back_to_defaults_not_to_phase_or_benchmark_budget() -> None:
    assert resolve(command="timeout: 10s", defaults="timeout: 1m").timeout_s == 10.0
    assert resolve(defaults="timeout: 1m").timeout_s == 60.0
    # a phase's and the benchmark's timeouts are their own budgets: commands are bounded by nesting
    assert resolve(phase="timeout: 2m", top="timeout: 1h\n").timeout_s is None


def test_null_means_not_set_and_falls_back() -> None:
    assert resolve(command="grace: null", phase="grace: 2s").grace_s == 2.0
    assert resolve(command="timeout: null", defaults="timeout: 1m").timeout_s == 60.0


def test_zero_grace_is_a_value_not_a_fallback() -> None:
    assert resolve(command="grace: 0", phase="grace: 2s").grace_s == 0.0


def test_benchmark_cleanup_resolves_without_a_phase() -> None:
    spec = parse_spec(
        spec_text(defaults="grace: 2s, on_timeout: stop_phase") + "cleanup: {run: 'true', timeout: 9s}\n"
    )
    assert spec.cleanup is not None
    assert resolve_command(spec, None, spec.cleanup) == ResolvedCommand(9.0, 2.0, "stop_phase")


def test_phase_cleanup_takes_phase_settings() -> None:
    spec = parse_spec(spec_text(phase="grace: 7s") + "    cleanup: echo bye\n")
    phase = spec.phases[0]
    assert phase.cleanup is not None
    assert resolve_command(spec, phase, phase.cleanup).grace_s == 7.0


@pytest.mark.parametrize("flag", ["true", "false"])
def test_resolve_ignores_the_timeouts_switch(flag: str) -> None:
    # `timeouts: false` is applied by the planner (every budget unlimited), not by precedence
    assert resolve(command="timeout: 5s", top=f"timeouts: {flag}\n").timeout_s == 5.0
