"""The ``warn:`` key: a catchable signal and a positive lead time, command > phase > defaults, or a SpecError
naming the file, line and key."""

from __future__ import annotations

import signal

import pytest

from grd_blocks.errors import SpecError
from grd_blocks.spec import WarnSpec, parse_spec, resolve_command


def _spec(*, command: str = "", phase: str = "", defaults: str = "") -> str:
    return (
        "name: warned\n"
        + (f"defaults: {{warn: {defaults}}}\n" if defaults else "")
        + "phases:\n  - name: p\n"
        + (f"    warn: {phase}\n" if phase else "")
        + "    commands:\n      - name: c\n        run: 'true'\n"
        + (f"        warn: {command}\n" if command else "")
    )


def _warn(**levels: str) -> WarnSpec | None:
    spec = parse_spec(_spec(**levels), source="warned.yaml")
    phase = spec.phases[0]
    return resolve_command(spec, phase, phase.commands[0]).warn


def test_no_warning_unless_some_level_sets_one() -> None:
    assert _warn() is None


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ({"defaults": "{signal: USR1, before: 60s}"}, (signal.SIGUSR1, 60.0)),
        ({"defaults": "{signal: USR1, before: 60s}", "phase": "{signal: SIGUSR2, before: 5}"},
         (signal.SIGUSR2, 5.0)),
        ({"phase": "{signal: usr2, before: 5}", "command": "{signal: 15, before: 1m30s}"},
         (signal.SIGTERM, 90.0)),
    ],
)
def test_command_beats_phase_beats_defaults(levels: dict[str, str], expected: tuple[int, float]) -> None:
    warn = _warn(**levels)
    assert warn is not None and (warn.signal, warn.before) == expected


@pytest.mark.parametrize(
    ("command", "fragments"),
    [
        ("{signal: KILL, before: 10s}", ["SIGKILL cannot be caught"]),
        ("{signal: STOP, before: 10s}", ["SIGSTOP cannot be caught"]),
        ("{signal: BOGUS, before: 10s}", ["'BOGUS' is not a signal name"]),
        ("{signal: 4242, before: 10s}", ["4242 is not a signal"]),
        ("{signal: USR1, before: 0}", ["positive duration"]),
        ("{signal: USR1, before: -5s}", ["negative"]),
        ("{signal: USR1}", ["missing required key 'before'"]),
        ("{signal: USR1, before: 5s, when: now}", ["unknown key 'when'"]),
    ],
)
def test_a_bad_warning_is_a_spec_error_naming_file_line_and_key(command: str, fragments: list[str]) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec(command=command), source="warned.yaml")
    message = str(caught.value)
    assert message.startswith("warned.yaml:7: key 'phases[0].commands[0].warn"), message
    for fragment in fragments:
        assert fragment in message
