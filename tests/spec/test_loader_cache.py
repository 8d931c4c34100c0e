"""A spec file is parsed once per process for the same text (the CLI's preflight and the flow it starts), and
anew when the text changes."""

from __future__ import annotations

from pathlib import Path

from grd_blocks.spec import load_spec

SPEC = "name: once\nphases:\n  - name: p\n    commands: [{name: c, run: 'true'}]\n"


def test_the_same_file_text_is_parsed_once_and_changed_text_anew(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    first = load_spec(path)
    assert load_spec(str(path)) is first
    path.write_text(SPEC.replace("once", "twice"))
    changed = load_spec(path)
    assert changed is not first and changed.name == "twice" and first.name == "once"
