"""Human durations: what parses, what is refused with a message naming the value, and round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grd_blocks.budget import format_duration, parse_duration
from grd_blocks.errors import DurationError, GrdError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
        ("1d2h3m4s5ms", 93784.005),
        ("0s", 0.0),
        ("90", 90.0),
        ("1.5", 1.5),
        (" 10s ", 10.0),
        ("1H30M", 5400.0),
        (".5s", 0.5),
        (90, 90.0),
        (1.5, 1.5),
        (0, 0.0),
        (None, None),
    ],
)
def test_valid_durations_parse_to_seconds(text: str | int | float | None, seconds: float | None) -> None:
    result = parse_duration(text)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("-5m", "negative"),
        ("-1", "negative"),
        (-1, "negative"),
        (-0.5, "negative"),
        ("nan", "not a duration"),
        ("NaN", "not a duration"),
        ("inf", "not a duration"),
        ("infinity", "not a duration"),
        ("+inf", "not a duration"),
        (math.nan, "NaN"),
        (math.inf, "infinity"),
        ("", "empty"),
        ("   ", "empty"),
        ("abc", "cannot read"),
        ("5x", "unknown unit"),
        ("5 minutes", "unknown unit"),
        ("30m1h", "out of order"),
        ("1h1h", "repeated"),
        ("1h30", "cannot read"),
        ("m", "cannot read"),
        (True, "boolean"),
        ([5], "expected a number or a string"),
    ],
)
def test_bad_durations_raise_naming_value_rule_and_fix(value: object, rule: str) -> None:
    with pytest.raises(DurationError) as err:
        parse_duration(value)  # type: ignore[arg-type]
    message = str(err.value)
    assert repr(value) in message
    assert rule in message
    assert "null for no limit" in message
    assert isinstance(err.value, GrdError) and isinstance(err.value, ValueError)
    assert err.value.value is value


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5400, "1h30m"),
        (90, "1m30s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (0, "0s"),
        (172805, "2d5s"),
        (3661.5, "1h1m1.5s"),
        (None, "no limit"),
        (math.inf, "no limit"),
    ],
)
def test_format_duration_is_short_and_human(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_format_then_parse_round_trips_to_the_millisecond(seconds: float) -> None:
    back = parse_duration(format_duration(seconds))
    assert back is not None
    assert abs(back - seconds) <= 0.0005 + seconds * 1e-12


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_any_string_parses_to_finite_non_negative_seconds_or_raises_duration_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except DurationError:
        return
    assert seconds is not None and math.isfinite(seconds) and seconds >= 0


@pytest.mark.parametrize("value", ["soon", "-5m", True, "1m1h"])
def test_a_bad_duration_given_as_a_parameter_names_the_parameter_the_rule_and_the_fix(value: object) -> None:
    with pytest.raises(DurationError) as raised:
        parse_duration(value, field="approval_budget")  # type: ignore[arg-type]
    message = str(raised.value)
    assert message.startswith(f"approval_budget: duration {value!r} is invalid: ")
    assert "'1h30m'" in message and raised.value.field == "approval_budget"
    with pytest.raises(DurationError) as bare:
        parse_duration(value)  # type: ignore[arg-type]
    assert str(bare.value) == message.removeprefix("approval_budget: ")
