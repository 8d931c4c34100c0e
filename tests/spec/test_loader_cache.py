"""A spec file is parsed once per process for the same text (the CLI's preflight and the flow it starts), and
anew when the text changes."""

from __future__ import annotations

import gc
import weakref
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


def test_a_spec_nobody_holds_any_more_is_freed_and_its_file_parsed_anew(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    first = weakref.ref(load_spec(path))
    gc.collect()
    assert first() is None  # the cache does not keep a spec alive: a run keeps its plan, not its spec
    assert load_spec(path).name == "once"
