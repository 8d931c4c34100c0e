"""libyaml parses a spec exactly as PyYAML's own parser does (values, and the line every error names); a spec
libyaml refuses is parsed again by PyYAML's parser: a message never depends on how PyYAML was built."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from grd_blocks.errors import SpecError
from grd_blocks.spec import loader

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "benchmark.yaml"
pytestmark = pytest.mark.skipif(loader._FAST_LOADER is None, reason="PyYAML was built without libyaml")


def _generated(n: int) -> str:
    lines = ["name: many", "timeout: 1h", "defaults: {timeout: 30s, grace: 1s}", "phases:", "  - name: p",
             "    max_parallel: 8", "    commands:"]
    lines += [f"      - {{name: c{i}, run: [sh, -c, \"echo {i}\"], env: {{N: \"{i}\"}}}}" for i in range(n)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [EXAMPLE.read_text(), _generated(500)], ids=["example", "500-commands"])
def test_libyaml_and_pyyaml_compose_the_same_values_and_lines(text: str) -> None:
    fast = loader._compose_with(loader._FAST_LOADER, text, "s.yaml")  # type: ignore[arg-type]
    pure = loader._compose_with(yaml.SafeLoader, text, "s.yaml")
    assert fast == pure


def _outcome(text: str) -> tuple[str, object]:
    try:
        return "loaded", loader.parse_spec(text).model_dump()
    except SpecError as exc:
        return "refused", str(exc)


@pytest.mark.parametrize("text", [
    'name: x\nphases: [{name: p, commands: [{name: c, run: "true", env: {A: "\\udc80"}}]}]\n',
    "name: x\nphases:\n  - name: p\n\tcommands: []\n",
    "name: x\nphases: [{name: p, commands: [{name: c, run: true}]\n",
], ids=["surrogate-escape", "tab-indent", "unclosed"])
def test_a_spec_libyaml_refuses_ends_as_pyyaml_s_own_parse_would(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_libyaml = _outcome(text)
    monkeypatch.setattr(loader, "_FAST_LOADER", None)
    assert with_libyaml == _outcome(text)
