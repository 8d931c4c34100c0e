"""The README's benchmark tables are the committed results: bench/readme_tables.py renders each generated
block from bench/results/; a block edited by hand, or a result committed without regenerating, fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "bench" / "readme_tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_benchmark_table_in_the_readme_is_its_committed_result() -> None:
    tables = _tables()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    present = [name for name in tables.RENDERERS if f"<!-- bench:{name} -->" in text]
    assert present, "the README has no generated benchmark block"
    _, changed = tables.updated(text)
    assert changed == [], f"{changed} differ from bench/results/: run `python bench/readme_tables.py`"


def test_a_hand_edited_figure_is_caught() -> None:
    tables = _tables()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    fresh, _ = tables.updated(text)
    edited = fresh.replace("<!-- bench:overhead -->\n", "<!-- bench:overhead -->\n| 1.0 ms faster |\n", 1)
    assert tables.updated(edited)[1] == ["overhead"]
