"""The spec loader never shows a traceback: thousands of random mutations of examples/benchmark.yaml (and of
hand-made hostile values) either load, within the limits the runtime can honour, or raise one ``SpecError``
that names the file and a line (and, where a key is to blame, the key)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grd_blocks.errors import SpecError
from grd_blocks.spec import BenchmarkSpec, parse_spec
from grd_blocks.spec.models import MAX_DURATION_S, CommandSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "examples" / "benchmark.yaml").read_text()
SOURCE = "fuzz.yaml"

_HOSTILE_CHARS = [
    ":", "-", " ", "\n", "\t", "[", "]", "{", "}", "&", "*", "!", "|", ">", "'", '"', "#", "%", "@", "`", ",",
    "?", "\\", "\0", "\x01", "\x1b", "\x7f", "\x85", "\u2028", "\ufeff", "é", "😀",
]
_HOSTILE_VALUES = [
    "1" * 400, "1e300", "1e400", "-1", ".nan", ".inf", "0", "0.0001", "null", "~", "[]", "{}", "''", "yes",
    "2020-02-30", "2001-12-14t21:59:43.10-05:00", "!!int zz", "!!float x", "!!binary '!!'",
    "!!python/object:os.system x", '"a\\0b"', '"\\udc80"', '"\\ud800x"', '"\\x00"', '"\\t"', "&a [*a]",
    "*nope", "<<: 1", "[" * 60 + "]" * 60, "{a: " * 40 + "1" + "}" * 40, "!!set {a, b}", "!!omap [a: 1]",
    "0x1F", "0o17", "1_000", "365d", "366d", "8760h", "1.5h", "250ms", "100000000000000000000d",
    "[python, '\\0']", "echo \0", '"echo \\0"',
]
_TAGS = ["null", "bool", "int", "float", "binary", "timestamp", "omap", "pairs", "set", "str", "seq", "map",
         "merge", "value", "python/object:os.system", "custom"]
_TAG_PAYLOADS = ["", "''", "'+'", "'-'", "maybe", "30s", "1", "-0", ".", "x", "1e400", "2020-02-30", "[a]",
                 "{a: 1}", "[[a, 1]]", "!!int 1"]
_TAGGED = [f"!!{tag} {payload}".rstrip() for tag in _TAGS for payload in _TAG_PAYLOADS]
_HOSTILE_VALUES += _TAGGED  # an explicit tag names the constructor: every one is tried with every payload
_KEYS = ["name", "timeout", "grace", "defaults", "phases", "commands", "run", "env", "cwd", "on_timeout",
         "max_parallel", "cleanup", "timeouts", "source", "base_dir", "<<", "SEED", "?", "timeuot"]


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    """The example with 1-6 random edits: characters, hostile values, keys, lines duplicated or dropped."""
    text = EXAMPLE
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["char", "value", "key", "dup", "drop", "indent"]))
        lines = text.split("\n")
        at = draw(st.integers(0, max(0, len(lines) - 1)))
        line = lines[at]
        if kind == "char":
            pos = draw(st.integers(0, len(text)))
            char = draw(st.sampled_from(_HOSTILE_CHARS) | st.characters())
            text = text[:pos] + char + text[pos + draw(st.integers(0, 1)):]
            continue
        if kind == "value" and ":" in line:
            value = draw(st.sampled_from(_HOSTILE_VALUES) | st.text(max_size=8))
            lines[at] = line.split(":", 1)[0] + ": " + value
        elif kind == "key" and ":" in line:
            indent = line[: len(line) - len(line.lstrip(" -"))]
            lines[at] = indent + draw(st.sampled_from(_KEYS)) + ":" + line.split(":", 1)[1]
        elif kind == "dup":
            lines.insert(at, line)
        elif kind == "drop":
            del lines[at]
        elif kind == "indent":
            lines[at] = " " * draw(st.integers(0, 5)) + line.lstrip()
        text = "\n".join(lines)
    return text


def _commands(spec: BenchmarkSpec) -> list[CommandSpec]:
    out = [command for phase in spec.phases for command in phase.commands]
    out += [phase.cleanup for phase in spec.phases if phase.cleanup is not None]
    return out + ([spec.cleanup] if spec.cleanup is not None else [])


def _check_runnable(spec: BenchmarkSpec) -> None:
    """What the loader accepted, the runtime can run: durations in range, OS strings encodable, no NUL."""
    durations = [spec.timeout, spec.grace, spec.defaults.timeout, spec.defaults.grace]
    durations += [value for phase in spec.phases for value in (phase.timeout, phase.grace)]
    durations += [value for command in _commands(spec) for value in (command.timeout, command.grace)]
    for seconds in durations:
        assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION_S), seconds
    for command in _commands(spec):
        texts = [command.run] if isinstance(command.run, str) else list(command.run)
        texts += [*command.env, *command.env.values(), *([command.cwd] if command.cwd else [])]
        for text in texts:
            assert "\0" not in text
            os.fsencode(text)


def _load_or_clear_error(text: str) -> None:
    try:
        spec = parse_spec(text, source=SOURCE, base_dir=ROOT)
    except SpecError as exc:
        message = str(exc)
        assert message.startswith(f"{SOURCE}:") and exc.line is not None and exc.line >= 1, message
        assert "\n" not in message.rstrip("\n") or "\n" in (exc.key or ""), message
        return
    _check_runnable(spec)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_any_mutation_of_the_example_loads_or_is_one_spec_error_naming_file_and_line(text: str) -> None:
    _load_or_clear_error(text)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=200))
def test_any_text_at_all_loads_or_is_one_spec_error_naming_file_and_line(text: str) -> None:
    _load_or_clear_error(text)


@pytest.mark.parametrize("value", _TAGGED)
@pytest.mark.parametrize("key", ["timeout", "max_parallel", "env"])
def test_every_yaml_tag_with_any_payload_loads_or_is_one_spec_error(key: str, value: str) -> None:
    """``timeout: !!timestamp 30s`` or ``!!bool maybe`` reach a YAML constructor that fails with a KeyError,
    an IndexError or an AttributeError: each is a SpecError naming the line, never a traceback."""
    where = {"timeout": f"timeout: {value}", "max_parallel": f"max_parallel: {value}",
             "env": f"env: {{SEED: {value}}}"}[key]
    _load_or_clear_error(f"name: tags\nphases:\n  - name: p\n    {where}\n    commands:\n"
                         "      - {name: c, run: 'true'}\n")


@pytest.mark.parametrize(
    ("value", "where", "words"),
    [
        ("timeout: 1e300", "timeout", "more than the longest"),
        ("timeout: " + "9" * 400, "timeout", "too large"),
        ("grace: 366d", "grace", "more than the longest"),
        ('phases: [{name: p, commands: [{name: c, run: "echo \\0"}]}]', "run", "NUL"),
        ('phases: [{name: p, commands: [{name: c, run: [echo, "a\\0"]}]}]', "run[1]", "NUL"),
        ('phases: [{name: p, commands: [{name: c, run: "true", env: {A: "\\udc80x\\ud800"}}]}]', "env.A",
         "cannot encode"),
        ('phases: [{name: p, commands: [{name: c, run: "true", cwd: "a\\0"}]}]', "cwd", "NUL"),
        ("timeout: 2020-02-30", None, "cannot read value"),
        ("name: x\x00", None, "U+0000"),
        ("name: [" + "[" * 100 + "]" * 101, None, "nests more than"),
    ],
)
def test_limits_the_runtime_cannot_honour_are_refused_at_load(value: str, where: str | None,
                                                               words: str) -> None:
    base = "name: lim\nphases: [{name: p, commands: [{name: c, run: 'true'}]}]\n"
    key = value.split(":", 1)[0]
    text = "\n".join(line for line in base.splitlines() if not line.startswith(key + ":")) + "\n" + value
    with pytest.raises(SpecError) as info:
        parse_spec(text, source=SOURCE)
    assert str(info.value).startswith(f"{SOURCE}:") and words in str(info.value), str(info.value)
    if where is not None:
        assert info.value.key is not None and info.value.key.endswith(where), info.value.key
