"""Human durations at the edges: spec files, the CLI, log lines.

Invariant: ``parse_duration`` returns ``None`` (no limit) or a finite float >= 0 seconds, and nothing else: a
negative, NaN, infinite, empty or malformed duration is a ``DurationError`` naming the value, the rule and the
fix. Accepted: numbers (seconds), numeric strings ("90", "1.5"), and unit strings made of ``<number><unit>``
parts in decreasing unit order, each unit at most once: ``d``, ``h``, ``m``, ``s``, ``ms`` ("90s", "5m",
"1h30m", "1.5h", "250ms", "2d", "1h 30m"). ``format_duration`` writes what ``parse_duration`` reads back
(to the millisecond).
"""

from __future__ import annotations

import math
import re
from numbers import Real

from grd_blocks.errors import DurationError

__all__ = ["UNITS", "format_duration", "parse_duration"]

UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
"""Seconds per unit, largest first."""

_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]+)\s*")
_UNIT_ORDER = list(UNITS)


def _check_number(value: float, original: object) -> float:
    if math.isnan(value):
        raise DurationError(original, "NaN is not a duration")
    if math.isinf(value):
        raise DurationError(original, "infinity is not a duration (use null for no limit)")
    if value < 0:
        raise DurationError(original, "durations cannot be negative")
    return value


def _parse_units(text: str, original: object) -> float:
    total = 0.0
    pos = 0
    last_rank = -1
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None or match.end() == pos:
            raise DurationError(
                original,
                f"cannot read {text[pos:]!r}; each part is a number followed by one of {', '.join(UNITS)}",
            )
        number, unit = match.group(1), match.group(2).lower()
        if unit not in UNITS:
            raise DurationError(original, f"unknown unit {match.group(2)!r}; units are {', '.join(UNITS)}")
        rank = _UNIT_ORDER.index(unit)
        if rank <= last_rank:
            raise DurationError(
                original,
                f"unit {unit!r} repeated or out of order; write parts largest first, each once "
                "(e.g. '1h30m')",
            )
        last_rank = rank
        total += float(number) * UNITS[unit]
        pos = match.end()
    return _check_number(total, original)


def parse_duration(value: str | int | float | None, *, field: str | None = None) -> float | None:
    """Seconds in ``value`` (a number, or a string like "90s", "5m", "1h30m"); None -> None (no limit). A
    ``DurationError`` names ``field`` (the parameter ``value`` was given as), if given."""
    try:
        return _parse(value)
    except DurationError as exc:
        if field is None:
            raise
        raise DurationError(value, exc.rule, field=field) from None


def _parse(value: str | int | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise DurationError(value, "a boolean is not a duration")
    if isinstance(value, Real):
        try:
            number = float(value)
        except OverflowError:  # an int with hundreds of digits
            raise DurationError(value, "it is too large for a duration (use null for no limit)") from None
        return _check_number(number, value)
    if not isinstance(value, str):
        raise DurationError(value, f"expected a number or a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise DurationError(value, "it is empty")
    if text.startswith("-"):
        raise DurationError(value, "durations cannot be negative")
    if text.lower().lstrip("+") in {"nan", "inf", "infinity"}:
        raise DurationError(value, f"{text!r} is not a duration (use null for no limit)")
    try:
        number = float(text)
    except ValueError:
        return _parse_units(text, value)
    return _check_number(number, value)


def format_duration(seconds: float | None) -> str:
    """A short human form: 5400 -> "1h30m", 90 -> "1m30s", 0.25 -> "250ms", None or inf -> "no limit"."""
    if seconds is None or seconds == math.inf:
        return "no limit"
    if math.isnan(seconds) or math.isinf(seconds):
        return str(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    total_ms = round(seconds * 1000)
    if total_ms == 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    days, rest = divmod(total_ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if rest:
        secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
        parts.append(f"{secs}s")
    return "".join(parts)
