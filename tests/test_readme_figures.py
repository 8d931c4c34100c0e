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


def test_checkpoint_verdicts_follow_the_figures_not_the_prose() -> None:
    tables = _tables()
    data = tables._load("checkpoint")
    assert data is not None
    row = data["save_load"][-1]
    row.update(grd_save_vs_disk=0.5, grd_save_vs_baseline=1.5, grd_load_touch_s=0.010,
               baseline_load_touch_s=0.009, grd_load_touch_cold_s=0.2, baseline_load_touch_cold_s=0.1)
    size = f"| {row['size_mib']} MiB |"
    lines = [line for line in tables.render_checkpoint(data).splitlines() if line.startswith(size)]
    save, warm, cold = lines[0], lines[1], lines[2]
    assert save.endswith(f"| 0.50{tables.X} met | 1.50{tables.X} met |")
    assert warm.endswith(f"| 0.90{tables.X} met |") and "| warm |" in warm
    assert cold.endswith(f"| 0.50{tables.X} **not met** |") and "dropped" in cold
