"""A plain spec is built from the parser's events with the very values the node-tree composer builds, and
without the composer's node tree: parsing an 8,000-command spec allocates at its peak less than twice what
the loaded spec keeps (the node tree made it about five times), and one of more than 100,000 values loads
(only an alias's expansion counts toward the composer's node limit). Anything not plain is left to the
composer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from grd_blocks.errors import SpecError
from grd_blocks.spec import loader
from grd_blocks.spec.plain import NOT_PLAIN, plain_data
from tests.spec.test_loader_fuzz import _mutated

ROOT = Path(__file__).resolve().parents[2]
PARSERS = [yaml.SafeLoader] + ([loader._FAST_LOADER] if loader._FAST_LOADER is not None else [])


def _plain(text: str, parser: type[yaml.SafeLoader]) -> Any:
    return plain_data(text, loader=parser, max_depth=loader.MAX_DEPTH)


def _comparable(value: Any) -> str:
    """The value as JSON with its types spelled out (so 1, 1.0, True and "1" differ) and NaN equal to NaN."""
    def typed(item: Any) -> Any:
        if isinstance(item, dict):
            return {"dict": [[typed(key), typed(inner)] for key, inner in item.items()]}
        if isinstance(item, list):
            return {"list": [typed(inner) for inner in item]}
        if isinstance(item, float) and math.isnan(item):
            return {"float": "nan"}
        return {type(item).__name__: repr(item)}
    return json.dumps(typed(value))


def _composed(text: str, parser: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """What the composer builds with ``parser`` (libyaml accepts a few texts PyYAML's parser refuses, such
    as a tab inside a plain key; the loader then takes libyaml's values)."""
    try:
        data, _ = loader._compose_with(parser, text, "s.yaml")
    except SpecError:
        return SpecError
    return data


def _generated(n: int) -> str:
    lines = ["name: many", "timeout: 1h", "defaults: {timeout: 30s, grace: 1s}", "phases:", "  - name: p",
             "    max_parallel: 8", "    commands:"]
    lines += [f"      - {{name: c{i}, run: [sh, -c, \"echo {i}\"], env: {{N: {i}, ON: yes}}, timeout: 60s}}"
              for i in range(n)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("parser", PARSERS, ids=lambda parser: parser.__name__)
@pytest.mark.parametrize("name", ["examples/benchmark.yaml", "tests/spec/data/full.yaml",
                                  "tests/spec/data/minimal.yaml", "tests/spec/data/no_timeouts.yaml"])
def test_a_plain_spec_gets_the_values_the_composer_builds(name: str, parser: type[yaml.SafeLoader]) -> None:
    text = (ROOT / name).read_text()
    data = _plain(text, parser)
    assert data is not NOT_PLAIN
    assert _comparable(data) == _comparable(_composed(text, parser))


@pytest.mark.parametrize("text", [
    (ROOT / "tests/spec/data/anchors.yaml").read_text(),  # anchors, aliases, a merge key
    "name: x\nphases: []\nname: y\n",  # a key twice
    "name: x\n1: y\n",  # a key that is not a string
    "name: !!str x\n",  # an explicit tag
    "name: x\nwhen: 2020-02-30\n",  # a timestamp no constructor can build
    "",  # no document
    "a: 1\n---\nb: 2\n",  # two documents
    "name: x\n= : y\n",  # the value tag
    "[" * (loader.MAX_DEPTH + 1) + "]" * (loader.MAX_DEPTH + 1),  # nested deeper than the limit
], ids=["anchors", "duplicate-key", "int-key", "explicit-tag", "bad-timestamp", "empty", "two-documents",
        "value-tag", "too-deep"])
def test_anything_not_plain_is_left_to_the_composer(text: str) -> None:
    assert all(_plain(text, parser) is NOT_PLAIN for parser in PARSERS)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_any_mutation_of_the_example_is_built_as_the_composer_builds_it_or_left_to_it(text: str) -> None:
    for parser in PARSERS:
        data = _plain(text, parser)
        if data is not NOT_PLAIN:
            composed = _composed(text, parser)
            assert composed is not SpecError, text  # the composer refuses what the event builder took
            assert _comparable(data) == _comparable(composed), text


_TRACED_PARSE = f"""
import gc, sys, tracemalloc
sys.path.insert(0, {str(ROOT)!r})
from grd_blocks.spec import loader
text = sys.stdin.read()
gc.collect()
tracemalloc.start()
spec = loader.parse_spec(text, source="many.yaml", base_dir={str(ROOT)!r})
kept, peak = tracemalloc.get_traced_memory()
print("TRACED", kept, peak)
"""


def _traced_parse(text: str) -> tuple[Any, int, int]:
    """The spec of ``text``, and the bytes its parse keeps and its peak (tracemalloc), measured in a process
    of its own: tracemalloc counts every thread's allocations, and in a test worker other tests' threads
    (Prefect's event and log workers) may allocate meanwhile."""
    done = subprocess.run([sys.executable, "-c", _TRACED_PARSE], input=text, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    kept, peak = (int(figure) for figure in done.stdout.split("TRACED", 1)[1].split()[:2])
    return loader.parse_spec(text, source="many.yaml", base_dir=ROOT), kept, peak


def test_parsing_an_8000_command_spec_peaks_within_a_quarter_above_what_the_spec_keeps() -> None:
    # 88,000 values: under the composer's node limit, so the old path loads it too
    spec, kept, peak = _traced_parse(_generated(8_000))
    assert len(spec.phases[0].commands) == 8_000 and spec.phases[0].commands[7_999].env == {"N": "7999",
                                                                                            "ON": "yes"}
    # each command becomes its model as it is read: its values and all the models never coexist (1.64x before)
    assert peak < 1.25 * kept, (peak, kept)


def test_commands_setting_the_same_fields_share_one_fields_set_and_still_dump_and_copy_as_their_own() -> None:
    spec, kept, _ = _traced_parse(_generated(2_000).replace("{name: c7, run", "{name: c7, cwd: sub, run"))
    commands = spec.phases[0].commands
    assert len({id(command.model_fields_set) for command in commands}) == 2  # c7 sets cwd too
    assert kept / len(commands) < 1_100, kept / len(commands)  # 1,021 bytes; 1,253 with a set of its own
    assert commands[7].model_dump(exclude_unset=True)["cwd"] == "sub"
    assert "cwd" not in commands[8].model_dump(exclude_unset=True)
    copied = commands[8].model_copy(update={"cwd": "elsewhere"})
    assert "cwd" in copied.model_fields_set and "cwd" not in commands[9].model_fields_set


def test_a_plain_spec_of_more_than_100000_values_loads_whole() -> None:
    spec = loader.parse_spec(_generated(12_000), source="many.yaml", base_dir=ROOT)  # 132,000 values
    assert [command.name for command in spec.phases[0].commands] == [f"c{i}" for i in range(12_000)]


def test_a_plain_spec_that_fails_validation_names_its_line_as_before() -> None:
    text = _generated(3).replace("timeout: 60s}", "timeout: soon}", 1)
    with pytest.raises(SpecError) as raised:
        loader.parse_spec(text, source="many.yaml", base_dir=ROOT)
    assert raised.value.line == 8 and raised.value.key == "phases[0].commands[0].timeout"


def test_an_alias_bomb_is_still_refused_naming_its_line() -> None:
    """Only what an alias makes the composer build again counts toward the limit: a plain spec of more than
    100,000 values loads (above), a billion laughs does not."""
    levels = ["a: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(SpecError) as raised:
        loader.parse_spec("\n".join(["name: bomb", *levels, "phases: []"]) + "\n", source="bomb.yaml")
    assert "expands to more than 100000 YAML nodes" in str(raised.value) and raised.value.line is not None
