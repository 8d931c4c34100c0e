"""Loading specs: valid files become frozen models; each mistake is one SpecError naming file, line, key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from grd_blocks.errors import GrdError, SpecError
from grd_blocks.spec import BenchmarkSpec, CommandSpec, PhaseSpec, load_spec, parse_spec

DATA = Path(__file__).parent / "data"

BASE = """\
name: nightly
timeout: 30m
defaults: {timeout: 5m, grace: 5s, on_timeout: continue}
phases:
  - name: smoke
    timeout: 2m
    max_parallel: 1
    commands:
      - name: hello
        run: echo hello
      - name: train
        run: [python, train.py, --epochs, "3"]
        timeout: 90s
        env: {SEED: "1"}
    cleanup: echo cleanup
"""
# line numbers in BASE: 1 name, 2 timeout, 3 defaults, 4 phases, 5 - name: smoke, 6 timeout, 7 max_parallel,
# 8 commands, 9 - name: hello, 10 run, 11 - name: train, 12 run, 13 timeout, 14 env, 15 cleanup


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def write(tmp_path: Path, text: str, name: str = "bench.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> SpecError:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    error = err.value
    assert error.file == str(path)
    assert str(path) in str(error)
    # no pydantic or yaml internals leak: no chained cause, no pydantic wording
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    assert not isinstance(error, ValidationError)
    assert "pydantic" not in str(error).lower()
    assert "errors.pydantic.dev" not in str(error)
    return error


def assert_names(error: SpecError, line: int, key: str, *fragments: str) -> None:
    message = str(error)
    assert error.line == line, message
    assert f":{line}:" in message, message
    assert error.key == key, message
    assert f"key '{key}'" in message, message
    for fragment in fragments:
        assert fragment in message, message


# --- valid specs -----------------------------------------------------------------------------------------


def test_base_spec_loads_with_durations_in_seconds(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, BASE))
    assert isinstance(spec, BenchmarkSpec)
    assert spec.name == "nightly"
    assert spec.timeout == 1800.0
    assert spec.defaults.timeout == 300.0 and spec.defaults.grace == 5.0
    assert spec.defaults.on_timeout == "continue"
    phase = spec.phases[0]
    assert phase.timeout == 120.0 and phase.max_parallel == 1
    assert phase.commands[0].run == "echo hello"
    assert phase.commands[1].run == ["python", "train.py", "--epochs", "3"]
    assert phase.commands[1].timeout == 90.0
    assert (
        phase.cleanup is not None and phase.cleanup.name == "cleanup" and phase.cleanup.run == "echo cleanup"
    )
    assert spec.source == str(tmp_path / "bench.yaml")
    assert spec.base_dir == tmp_path.resolve()


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = load_spec(DATA / "minimal.yaml")
    assert spec.timeout is None and spec.grace is None and spec.timeouts is True
    assert spec.defaults.timeout is None and spec.cleanup is None
    phase = spec.phases[0]
    assert phase.max_parallel == 1 and phase.cleanup is None and phase.timeout is None
    command = phase.commands[0]
    assert command.env == {} and command.cwd is None and command.on_timeout is None and command.grace is None


def test_full_spec_with_every_key_loads() -> None:
    spec = load_spec(DATA / "full.yaml")
    smoke, evaluation = spec.phases
    assert smoke.max_parallel == 2 and smoke.on_timeout == "stop_phase" and smoke.grace == 3.0
    train = smoke.commands[1]
    assert train.on_timeout == "stop_benchmark" and train.cwd == "." and train.grace == 1.0
    assert evaluation.cleanup is not None and evaluation.cleanup.name == "teardown"
    assert evaluation.cleanup.run == ["sh", "-c", "echo bye"] and evaluation.cleanup.timeout == 20.0
    assert spec.cleanup is not None and spec.cleanup.timeout == 60.0
    assert spec.base_dir == DATA.resolve()


def test_env_numbers_and_booleans_keep_their_yaml_text() -> None:
    spec = load_spec(DATA / "full.yaml")
    assert spec.phases[0].commands[1].env == {"SEED": "1", "LR": "1e-3", "DEBUG": "true", "WORKERS": "4"}
    leading_zero = parse_spec(edit('env: {SEED: "1"}', "env: {SEED: 01, ON: yes}"))
    assert leading_zero.phases[0].commands[1].env == {"SEED": "01", "ON": "yes"}


def test_anchors_and_merge_keys_work_and_explicit_keys_win() -> None:
    spec = load_spec(DATA / "anchors.yaml")
    phase = spec.phases[0]
    assert phase.timeout == 60.0 and phase.grace == 1.0
    assert phase.commands[1].timeout == 10.0


def test_timeouts_false_is_kept_for_the_planner() -> None:
    spec = load_spec(DATA / "no_timeouts.yaml")
    assert spec.timeouts is False
    assert spec.timeout == 3600.0
    assert spec.phases[0].commands[0].timeout == 5400.0


def test_specs_are_frozen() -> None:
    spec = load_spec(DATA / "minimal.yaml")
    with pytest.raises(ValidationError):
        spec.name = "other"


def test_parse_spec_names_its_source_in_errors() -> None:
    with pytest.raises(SpecError, match=r"^<string>:1: key 'phases'"):
        parse_spec("name: x\n")
    with pytest.raises(SpecError, match=r"^inline\.yaml:1: "):
        parse_spec("name: x\n", source="inline.yaml")


def test_models_accept_python_values_too() -> None:
    command = CommandSpec(name="c", run=["echo", "1"], timeout="1m")  # type: ignore[arg-type]
    assert command.timeout == 60.0
    assert PhaseSpec(name="p", commands=[command]).max_parallel == 1


# --- mistakes: each names file, line and key ------------------------------------------------------------

# fmt: off
MISTAKES = [
    # (id, text, line, key, fragments of the message)
    ("unknown_key_suggests", edit("timeout: 90s", "tiemout: 90s"), 13, "phases[0].commands[1].tiemout",
     ["unknown key 'tiemout'", "did you mean 'timeout'?"]),
    ("unknown_top_key", edit("timeout: 30m", "timout: 30m"), 2, "timout",
     ["unknown key 'timout'", "did you mean 'timeout'?"]),
    ("unknown_phase_key", edit("max_parallel: 1", "max_paralel: 1"), 7, "phases[0].max_paralel",
     ["did you mean 'max_parallel'?"]),
    ("unknown_defaults_key", edit("on_timeout: continue", "ontimeout: continue"), 3, "defaults.ontimeout",
     ["did you mean 'on_timeout'?"]),
    ("unknown_key_no_close_match", edit("timeout: 90s", "zzz: 1"), 13, "phases[0].commands[1].zzz",
     ["unknown key 'zzz'", "valid keys here: name, run, timeout"]),
    ("loader_field_is_unknown", BASE + "source: x.yaml\n", 16, "source", ["unknown key 'source'"]),
    ("misspelt_name_beats_missing", edit("- name: hello", "- nme: hello"), 9, "phases[0].commands[0].nme",
     ["did you mean 'name'?"]),
    ("bad_duration", edit("timeout: 90s", "timeout: 90 seconds"), 13, "phases[0].commands[1].timeout",
     ["'90 seconds'", "unknown unit"]),
    ("bad_duration_garbage", edit("timeout: 2m", "timeout: soon"), 6, "phases[0].timeout", ["'soon'"]),
    ("negative_timeout", edit("timeout: 30m", "timeout: -30m"), 2, "timeout", ["'-30m'", "negative"]),
    ("negative_number_timeout", edit("timeout: 90s", "timeout: -5"), 13, "phases[0].commands[1].timeout",
     ["-5", "negative"]),
    ("nan_timeout", edit("timeout: 90s", "timeout: .nan"), 13, "phases[0].commands[1].timeout", ["NaN"]),
    ("nan_string_timeout", edit("timeout: 90s", "timeout: nan"), 13, "phases[0].commands[1].timeout",
     ["'nan'"]),
    ("inf_timeout", edit("timeout: 90s", "timeout: .inf"), 13, "phases[0].commands[1].timeout",
     ["infinity", "null for no limit"]),
    ("zero_timeout", edit("timeout: 2m", "timeout: 0"), 6, "phases[0].timeout", ["timeout of 0", "null"]),
    ("negative_grace", edit("grace: 5s", "grace: -1s"), 3, "defaults.grace", ["negative"]),
    ("duplicate_command", edit("- name: train", "- name: hello"), 11, "phases[0].commands[1].name",
     ["command name 'hello' is used twice"]),
    ("duplicate_phase", BASE + "  - name: smoke\n    commands: [{name: x, run: x}]\n", 16, "phases[1].name",
     ["phase name 'smoke' is used twice"]),
    ("cleanup_name_clashes", edit("- name: hello", "- name: cleanup"), 15, "phases[0].cleanup.name",
     ["also a command's name"]),
    ("duplicate_yaml_key", edit("    max_parallel: 1\n", "    max_parallel: 1\n    max_parallel: 2\n"), 8,
     "phases[0].max_parallel", ["appears twice"]),
    ("empty_command_string", edit("run: echo hello", "run: ''"), 10, "phases[0].commands[0].run",
     ["command is empty"]),
    ("blank_command_string", edit("run: echo hello", "run: '   '"), 10, "phases[0].commands[0].run",
     ["command is empty"]),
    ("empty_command_list", edit("run: echo hello", "run: []"), 10, "phases[0].commands[0].run",
     ["command list is empty"]),
    ("non_string_argv", edit('--epochs, "3"]', "--epochs, 3]"), 12, "phases[0].commands[1].run[3]",
     ["argv item 3 is 3", 'quote it: "3"']),
    ("nested_argv", edit('--epochs, "3"]', "[--epochs]]"), 12, "phases[0].commands[1].run[2]",
     ["argv item 2"]),
    ("run_mapping", edit("run: echo hello", "run: {sh: x}"), 10, "phases[0].commands[0].run",
     ["run must be a string"]),
    ("null_run", edit("run: echo hello", "run: null"), 10, "phases[0].commands[0].run", ["run must be"]),
    ("missing_run", edit("        run: echo hello\n", ""), 9, "phases[0].commands[0].run",
     ["missing required key 'run'"]),
    ("bad_command_name", edit("- name: hello", "- name: hello world"), 9, "phases[0].commands[0].name",
     ["'hello world'", "[A-Za-z0-9_.-]", "'hello_world'"]),
    ("bad_phase_name", edit("- name: smoke", "- name: smoke/test"), 5, "phases[0].name", ["'smoke/test'"]),
    ("dots_only_name", edit("name: nightly", "name: '..'"), 1, "name", ["not only dots"]),
    ("long_name", edit("name: nightly", "name: " + "x" * 64), 1, "name", ["1-63 characters"]),
    ("name_not_string", edit("name: nightly", "name: 42"), 1, "name", ["42 is invalid for name", "quote"]),
    ("name_bool", edit("name: nightly", "name: yes"), 1, "name", ["True is invalid for name"]),
    ("bad_on_timeout", edit("on_timeout: continue", "on_timeout: stop"), 3, "defaults.on_timeout",
     ["'stop' is not a valid on_timeout", "'stop_phase'"]),
    ("max_parallel_zero", edit("max_parallel: 1", "max_parallel: 0"), 7, "phases[0].max_parallel",
     ["greater than or equal to 1"]),
    ("max_parallel_text", edit("max_parallel: 1", "max_parallel: '2'"), 7, "phases[0].max_parallel",
     ["valid integer"]),
    ("max_parallel_float", edit("max_parallel: 1", "max_parallel: 1.5"), 7, "phases[0].max_parallel",
     ["valid integer"]),
    ("timeouts_not_bool", BASE + "timeouts: maybe\n", 16, "timeouts", ["true or false"]),
    ("env_list_value", edit('env: {SEED: "1"}', "env: {SEED: [1, 2]}"), 14, "phases[0].commands[1].env.SEED",
     ["env value of SEED is list"]),
    ("env_null_value", edit('env: {SEED: "1"}', "env: {SEED: null}"), 14, "phases[0].commands[1].env.SEED",
     ["null", "quote it"]),
    ("env_not_mapping", edit('env: {SEED: "1"}', "env: [SEED=1]"), 14, "phases[0].commands[1].env",
     ["env must be a mapping"]),
    ("env_bad_name", edit('env: {SEED: "1"}', 'env: {"A=B": "1"}'), 14, "phases[0].commands[1].env.A=B",
     ["environment variable name 'A=B'"]),
    ("cwd_not_string", edit('env: {SEED: "1"}', "cwd: [a]"), 14, "phases[0].commands[1].cwd",
     ["valid string"]),
    ("phases_not_list", "name: x\nphases: smoke\n", 2, "phases", ["list"]),
    ("phases_empty", "name: x\nphases: []\n", 2, "phases", ["no phases"]),
    ("phase_without_commands", "name: x\nphases:\n  - name: p\n", 3, "phases[0].commands",
     ["phase 'p' has no commands"]),
    ("commands_not_list", "name: x\nphases:\n  - name: p\n    commands: {name: x, run: y}\n", 4,
     "phases[0].commands", ["list"]),
    ("command_not_mapping", edit("      - name: hello\n        run: echo hello\n", "      - echo hello\n"), 9,
     "phases[0].commands[0]", ["mapping"]),
    ("defaults_not_mapping", edit("defaults: {timeout: 5m, grace: 5s, on_timeout: continue}", "defaults: 5"),
     3, "defaults", ["mapping"]),
    ("missing_name", BASE.replace("name: nightly\n", "# no name\n", 1), 2, "name",
     ["missing required key 'name'"]),
    ("missing_phases", "name: x\ntimeout: 5m\n", 1, "phases", ["missing required key 'phases'"]),
]
# fmt: on


@pytest.mark.parametrize(
    ("text", "line", "key", "fragments"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_every_mistake_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, fragments: list[str]
) -> None:
    error = load_error(tmp_path, text)
    assert_names(error, line, key, *fragments)
    assert isinstance(error, GrdError) and isinstance(error, ValueError)


def test_several_mistakes_report_the_first_and_count_the_rest(tmp_path: Path) -> None:
    text = edit("timeout: 90s", "timeout: -1").replace("max_parallel: 1", "max_parallel: 0")
    error = load_error(tmp_path, text)
    assert_names(error, 7, "phases[0].max_parallel", "1 more problem after this one")


YAML_SYNTAX = [
    ("unclosed_flow_list", edit('--epochs, "3"]', '--epochs, "3"'), 13),
    ("bad_indent", edit("    max_parallel: 1\n", "   max_parallel: 1\n"), 7),
    ("tab_indent", edit("    max_parallel: 1\n", "\tmax_parallel: 1\n"), 7),
    ("unclosed_quote", edit("run: echo hello", "run: 'echo hello"), 10),
    ("two_documents", BASE + "---\nname: y\n", 16),
]


@pytest.mark.parametrize(("text", "line"), [m[1:] for m in YAML_SYNTAX], ids=[m[0] for m in YAML_SYNTAX])
def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    error = load_error(tmp_path, text)
    assert "YAML syntax error" in str(error)
    assert error.line is not None and abs(error.line - line) <= 1, str(error)
    assert f":{error.line}:" in str(error)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("- a\n- b\n", "list, not a mapping"),
        ("just text\n", "str, not a mapping"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    error = load_error(tmp_path, text)
    assert error.line == 1
    assert fragment in str(error)


def test_non_string_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, edit("    max_parallel: 1\n", "    1: 2\n"))
    assert error.line == 7
    assert "not a string" in str(error)


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    error = load_error(tmp_path, "name: x\nphases: &p\n  - *p\n")
    assert "cycle" in str(error)


def test_missing_file_is_a_spec_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value)
    assert "does not exist" in str(err.value)
    assert err.value.file == str(path)


def test_directory_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="directory"):
        load_spec(tmp_path)


def test_non_utf8_file_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(path)


# --- robustness: whatever the text, a spec or a SpecError ------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_mutation_of_a_valid_spec_loads_or_raises_spec_error(data: st.DataObject) -> None:
    text = BASE
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        start = data.draw(st.integers(min_value=0, max_value=len(text)))
        end = data.draw(st.integers(min_value=start, max_value=min(len(text), start + 8)))
        insert = data.draw(
            st.sampled_from(["", " ", "\n", ":", "-", "[", "]", "{", "'", "0", "x", "  ", "*a"])
        )
        text = text[:start] + insert + text[end:]
    try:
        parse_spec(text, source="fuzz.yaml")
    except SpecError as error:
        assert str(error).startswith("fuzz.yaml")
        assert error.__cause__ is None


def test_spec_error_is_raised_from_an_edited_real_file_line(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        name: edited
        phases:
          - name: a
            commands:
              - name: one
                run: "true"
                on_timeout: stop_everything
        """
    )
    error = load_error(tmp_path, text)
    assert_names(error, 7, "phases[0].commands[0].on_timeout", "stop_everything", "stop_benchmark")
