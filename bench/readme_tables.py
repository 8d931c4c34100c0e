"""The README's benchmark tables, generated from the results committed in ``bench/results/`` (no drift).

Each generated block sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in README.md and is
rendered here from ``bench/results/NAME.json`` (a result that is absent renders as a line saying so). Run
``python bench/readme_tables.py`` after a benchmark to rewrite the blocks; ``--check`` exits 1 naming every
block that differs from its results (tests/test_readme_figures.py runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
X = "\u00d7"  # the multiplication sign of the README's ratios


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _load_text(data: dict[str, Any]) -> str:
    """When and under what load: ``2026-12-05, load 0.30-1.20`` (1-minute load average, start and end)."""
    when = f"{data['date']}, " if data.get("date") else ""
    start, end = data.get("loadavg_start"), data.get("loadavg_end")
    if not start or not end:
        return f"{when}load not recorded"
    return f"{when}load {min(start[0], end[0]):.2f}-{max(start[0], end[0]):.2f}"


def _met(flag: bool) -> str:
    return "met" if flag else "**not met**"


def render_overhead(data: dict[str, Any]) -> str:
    per = data["per_command"]
    bare, grd = per["bare_prefect_task"], per["grd_command_task"]
    target = per["target_overhead_ms"]
    spread = per["overhead_spread_ms"]
    lines = [
        f"Per command (`bench_overhead.py`, {per['runs']} runs of {per['commands_per_side']} {X} "
        f"`{per['command']}` per side in alternating blocks of {per['block']}, one flow, one Prefect API; "
        f"{_load_text(data)}; target +{target} ms):",
        "",
        "| | bare Prefect task (`subprocess.run`) | grd command task | grd minus bare, median of runs "
        "(spread) | target |",
        "|---|---|---|---|---|",
        f"| per command | {bare['median_ms']} ms | {grd['median_ms']} ms "
        f"| +{per['overhead_median_of_runs_ms']} ms ({spread[0]}-{spread[1]}) "
        f"| {_met(per['overhead_median_of_runs_ms'] <= target)} |",
    ]
    scheduled = sorted(per.get("overhead_with_scheduling_ms_per_run") or [])
    if scheduled:
        median = scheduled[len(scheduled) // 2]
        lines.append(
            f"| with scheduling | {bare['mean_with_scheduling_ms']} ms | {grd['mean_with_scheduling_ms']} ms "
            f"| +{median} ms ({scheduled[0]}-{scheduled[-1]}) | {_met(median <= target)} |")
    big = data.get("benchmark")
    if big:
        lines += ["", f"{big['commands']:,} commands as one grd benchmark flow against one bare Prefect flow "
                      f"of as many tasks, {big['rounds']} alternating rounds on the same API, each side "
                      f"started once the server had recorded every task run of the one before: grd "
                      f"{' / '.join(f'{w} s' for w in big['grd_benchmark_flow_walls_s'])}, bare "
                      f"{' / '.join(f'{w} s' for w in big['bare_prefect_flow_walls_s'])}: "
                      f"**{big['ratio_of_medians']}{X}** (target at most {big['target_ratio']}{X}, "
                      f"{_met(big['ratio_of_medians'] <= big['target_ratio'])})."]
    parts = data.get("components") or {}
    modes = [mode for mode in ("namespace", "cgroup", "subreaper") if mode in parts]
    if modes:
        lines += ["", f"The runner alone (`run_command true` against `subprocess.run`, interleaved, "
                      f"{parts['commands']} each, in the benchmark's process; target at most "
                      f"{parts['target_ratio']}{X}):", "",
                  "| containment | `subprocess.run` | `run_command` | ratio | target |",
                  "|---|---|---|---|---|"]
        for mode in modes:
            row = parts[mode]
            lines.append(f"| {mode} | {row['subprocess_run']['median_ms']} ms "
                         f"| {row['run_command']['median_ms']} ms | {row['ratio_median']}{X} "
                         f"| {_met(bool(row['meets_target']))} |")
    return "\n".join(lines)


def render_scale(data: dict[str, Any]) -> str:
    lines = [
        f"Scale (`bench_scale.py`, each side a flow process of its own on a real `prefect server`; "
        f"{_load_text(data)}; targets: wall at most {data['target_ratio']}{X} the bare flow's, grd's peak "
        f"RSS at the largest size within {data['target_rss_growth']:.0%} of the smallest):",
        "",
        "| server | commands | command | max_parallel | bare flow | grd flow | ratio | extra API requests "
        "per command | peak RSS bare / grd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for server, rows in data["servers"].items():
        if server.endswith("_rss_growth"):
            continue
        for row in rows:
            lines.append(
                f"| {server} | {row['commands']:,} | `{row['command']}` | {row['max_parallel']} "
                f"| {row['bare']['wall_s']} s | {row['grd']['wall_s']} s | {row['ratio']}{X} "
                f"| {row['extra_requests_per_command']} "
                f"| {row['bare']['peak_rss_mb']:.0f} / {row['grd']['peak_rss_mb']:.0f} MiB |")
    growth = [(server[: -len("_rss_growth")], item) for server, items in data["servers"].items()
              if server.endswith("_rss_growth") for item in items]
    if growth:
        lines += ["", "| server | command | max_parallel | grd peak RSS | growth | bare growth | target |",
                  "|---|---|---|---|---|---|---|"]
        for server, item in growth:
            small, large = item["grd_peak_rss_mb"]
            lines.append(
                f"| {server} | `{item['command']}` | {item['max_parallel']} "
                f"| {small:.0f} MiB at {item['from']:,}, {large:.0f} MiB at {item['to']:,} "
                f"| {item['grd_growth']:+.1%} | {item['bare_growth']:+.1%} "
                f"| {_met(item['grd_growth'] <= data['target_rss_growth'])} |")
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {"overhead": render_overhead, "scale": render_scale}


def render(name: str) -> str:
    data = _load(name)
    if data is None:
        return f"(no committed result: run `python bench/bench_{name}.py`)"
    return RENDERERS[name](data)


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- bench:{name} -->\n)(.*?)(<!-- /bench:{name} -->)", re.S)


def updated(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated block rendered afresh, and the names of the blocks that changed."""
    changed = []
    for name in RENDERERS:
        pattern = _block(name)
        match = pattern.search(text)
        if match is None:
            continue
        fresh = render(name) + "\n"
        if match.group(2) != fresh:
            changed.append(name)
            text = text[: match.start(2)] + fresh + text[match.end(2):]
    return text, changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a block differs from its results")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    fresh, changed = updated(text)
    if args.check:
        if changed:
            print(f"README.md: the generated block(s) {', '.join(changed)} differ from bench/results/; run "
                  "`python bench/readme_tables.py` to regenerate them", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    print(f"README.md: regenerated {', '.join(changed) or 'nothing (already current)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
