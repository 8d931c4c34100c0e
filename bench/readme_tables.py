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
    measured = data.get("measured", {})
    when = "measured per server as below" if measured else _load_text(data)
    lines = [
        f"Scale (`bench_scale.py`, each side a flow process of its own on a real `prefect server`; "
        f"{when}; targets: wall at most {data['target_ratio']}{X} the bare flow's, grd's peak "
        f"RSS at the largest size within {data['target_rss_growth']:.0%} of the smallest):",
        "",
        "| server | commands | command | max_parallel | bare flow | grd flow | ratio | extra API requests "
        "per command | peak RSS bare / grd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if measured:
        lines.insert(1, "; ".join(
            f"{server} on {at['date']} at commit {at['commit']}, load "
            f"{at['loadavg_start'][0]}-{at.get('loadavg_end', at['loadavg_start'])[0]}"
            for server, at in measured.items()) + ".")
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


def _spread(values: list[float] | None, scale: Callable[[float], float]) -> str:
    """`` (low-high)`` of ``values`` after ``scale``, or nothing when the runs were not kept."""
    if not values:
        return ""
    low, high = sorted((scale(min(values)), scale(max(values))))
    return f" ({low:.0f}-{high:.0f})"


def _ratio(value: float) -> str:
    return f"{value:.2f}{X}"


def _goal(value: float, target: float) -> str:
    """``value`` as a ratio and whether it reaches ``target``, judged on the figure shown (two decimals)."""
    return f"{_ratio(value)} {_met(round(value, 2) >= target)}"


def _save_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"| state | grd save, MiB/s | `torch.save` + fsync + rename, MiB/s | disk (dd direct), MiB/s "
             f"| grd / disk (goal 0.5{X}) | grd / `torch.save` (goal 1.5{X}) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        size, runs = row["size_mib"], row.get("runs_s", {})

        def rate(seconds: float, size: float = size) -> float:
            return size / seconds

        vs_disk, vs_base = row["grd_save_vs_disk"], row["grd_save_vs_baseline"]
        lines.append(
            f"| {size} MiB | {row['grd_save_mib_s']:.0f}{_spread(runs.get('grd_save'), rate)} "
            f"| {row['baseline_save_mib_s']:.0f}{_spread(runs.get('baseline_save'), rate)} "
            f"| {row['disk_direct_write_mib_s']:.0f} "
            f"| {_goal(vs_disk, 0.5)} | {_goal(vs_base, 1.5)} |")
    if not any(row["size_mib"] >= 4096 for row in rows):
        lines += ["", "Goal 1 also asks for a 4 GiB state: not measured here."]
    return lines


def _load_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"| state | page cache | grd verified load + touch, ms | `torch.load(mmap=True)` + touch, ms "
             f"| mmap / grd (goal 0.9{X}) |",
             "|---|---|---|---|---|"]

    def ms(seconds: float) -> float:
        return seconds * 1e3

    for row in rows:
        runs = row.get("runs_s", {})
        cases = [("warm", row["grd_load_touch_s"], row["baseline_load_touch_s"], "load_warm")]
        if "grd_load_touch_cold_s" in row:
            cases.append(("dropped before each run", row["grd_load_touch_cold_s"],
                          row["baseline_load_touch_cold_s"], "load_cold"))
        for cache, grd, base, key in cases:
            ratio = base / grd
            lines.append(
                f"| {row['size_mib']} MiB | {cache} "
                f"| {ms(grd):.0f}{_spread(runs.get(f'grd_touch_{key}'), ms)} "
                f"| {ms(base):.0f}{_spread(runs.get(f'baseline_touch_{key}'), ms)} "
                f"| {_goal(ratio, 0.9)} |")
    return lines


def _memory_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| state | save peak RSS growth, grd / `torch.save` | goal: `torch.save`'s + 10% of the state "
             "| load peak RSS growth, grd / mmap | goal: mmap's + 10% of the state |",
             "|---|---|---|---|---|"]
    for row in rows:
        allowance = row["size_mib"] * 0.1
        grd_save, base_save = row["grd_save_peak_rss_mib"], row["baseline_save_peak_rss_mib"]
        grd_load, base_load = row["grd_load_peak_rss_mib"], row["baseline_load_peak_rss_mib"]
        lines.append(
            f"| {row['size_mib']} MiB | +{grd_save:.0f} / +{base_save:.0f} MiB "
            f"| {_met(grd_save <= base_save + allowance)} | +{grd_load:.0f} / +{base_load:.0f} MiB "
            f"| {_met(grd_load <= base_load + allowance)} |")
    return lines



def _async_lines(shape: str, asyncs: list[dict[str, Any]]) -> list[str]:
    """The README's sentences on ``save_async``'s blocked time for the state of ``shape``."""
    what = ("a state of one tensor" if shape == "one tensor"
            else f"a model-shaped state ({asyncs[0]['tensors']:,} tensors: a state_dict and Adam's state)")
    parts = ", ".join(f"{item['blocked_ratio']:.1%} at {item['size_mib']} MiB "
                      f"({_met(item['blocked_ratio'] <= 0.1)})" for item in asyncs)
    first = " / ".join(f"{item['first_blocked_ratio']:.0%}" for item in asyncs)
    lines = ["", f"With {what}, `save_async` blocks the loop for {parts} of a synchronous save (goal at most "
                 "10%), measured with the writer idle before each save, once the run handle has snapshot "
                 f"buffers to reuse (the first async save of a handle allocates them: {first})."]
    chained = [item for item in asyncs if "back_to_back_ratio" in item]
    if chained:
        parts = ", ".join(
            f"{item['back_to_back_ratio']:.1%} at {item['size_mib']} MiB "
            f"({_met(item['back_to_back_ratio'] <= 0.1)}; {item['back_to_back_written']} of "
            f"{item['back_to_back_saves']} written, the last one "
            f"{'among them' if item['back_to_back_last_written'] else '**missing**'})"
            for item in chained)
        lines += ["", "Back to back (one `save_async` right after another, a loop saving faster than "
                      f"the disk), the median call blocks for {parts} of a synchronous save; a save "
                      "still waiting when a newer one comes is superseded, never written."]
    return lines

def render_checkpoint(data: dict[str, Any]) -> str:
    """Issue #31's local goals, each verdict computed from the figures: save >= 0.5x the disk's direct write
    and >= 1.5x torch.save + fsync + rename; verified load + touch >= 0.9x torch.load(mmap=True) + touch; peak
    RSS within the baseline's + 10% of the state; async blocked time <= 10% of a synchronous save."""
    rows = data["save_load"]
    lines = [
        f"Checkpoints on local disk (`bench_checkpoint.py`, {_load_text(data)}, {data.get('cpus', '?')} "
        f"CPUs, {data.get('digest', 'sha256')} digest; medians of {data.get('repeats', 7)} interleaved runs, "
        "the fastest and slowest in brackets). Baselines a careful user writes: `torch.save(state, f)` into "
        "the open file + fsync + rename + fsync of the directory, and `torch.load(path, mmap=True, "
        "weights_only=True)`; the disk's raw sequential write is `dd oflag=direct` in the same run; each "
        "side deletes its save from two turns before, untimed, as a run keeping its last two checkpoints "
        "does; peak RSS of one save or load, each in a child process of its own.",
        "",
        *_save_rows(rows),
        "",
        *_load_rows(rows),
        "",
        *_memory_rows(rows),
    ]
    asyncs = data.get("async") or []
    for shape in dict.fromkeys(item.get("state", "one tensor") for item in asyncs):
        lines += _async_lines(shape, [item for item in asyncs if item.get("state", "one tensor") == shape])
    local = {row["checkpoints"]: row for row in data.get("latest") or [] if row["backend"] == "local"}
    if local:
        most = max(local)
        lines += ["", "`latest()` on local disk reads LATEST.json, its manifest and the payload sizes "
                      "whatever the number of checkpoints: "
                      + " / ".join(f"{row['latest_s'] * 1e3:.2f}" for _, row in sorted(local.items()))
                      + f" ms with {', '.join(f'{count:,}' for count in sorted(local))} checkpoints "
                      f"(a listing scan: {local[most]['scan_s'] * 1e3:.0f} ms at {most:,})."]
    return "\n".join(lines)


def render_s3(data: dict[str, Any]) -> str:
    """Issue #31 goal 4: on S3, save >= 1.0x boto3 ``upload_file`` and load >= 1.0x boto3 ``download_file``
    (same part size and concurrency), with the other clients beside them."""
    transfer, results = data["transfer"], data["results"]
    loads = [row[key] for row in results for key in ("loadavg_1m_before", "loadavg_1m_after") if key in row]
    load = f"load {min(loads):.1f}-{max(loads):.1f}" if loads else "load not recorded"
    lines = [
        f"S3 (`bench_s3.py`, {data['backend']}, {transfer['part_mib']:.0f} MiB parts {X} "
        f"{transfer['concurrency']} in flight, {transfer['rounds']} interleaved rounds after "
        f"{transfer['warmup_rounds']} warm-up, {load}; throughput ratios of the medians, above 1 = grd "
        f"faster; goals: save and load at least 1.0{X} boto3):",
        "",
        "| state | save vs boto3 `upload_file` | save vs boto3, payload signing off | save vs s3fs "
        "`open().write` | load vs boto3 `download_file` | load vs s3fs `cat_file` |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        save, load_ratio = row["save_vs_boto3"], row["load_vs_boto3"]
        lines.append(
            f"| {row['size_mib']:.0f} MiB | {_goal(save, 1.0)} "
            f"| {_ratio(row['save_vs_boto3_unsigned'])} | {_ratio(row['save_vs_s3fs_write'])} "
            f"| {_goal(load_ratio, 1.0)} | {_ratio(row['load_vs_s3fs_cat'])} |")
    return "\n".join(lines)


def _s(spread: dict[str, float], sign: bool = False) -> str:
    """``2.15 s (2.02-2.41)``: a median and its spread."""
    median = f"{spread['median']:+.2f}" if sign else f"{spread['median']:.2f}"
    return f"{median} s ({spread['min']:.2f}-{spread['max']:.2f})"


_API = {"ephemeral": "ephemeral API (`PREFECT_API_URL` unset)", "server": "a running `prefect server`"}


def render_attempt_cost(data: dict[str, Any]) -> str:
    modes = [mode for mode in ("ephemeral", "server") if mode in data["api"]]
    runs = data["config"]["runs"]
    lines = [
        f"Fixed cost of one attempt (`bench_attempt_cost.py`, {runs} runs per side, each a fresh process, "
        f"sides alternating; {_load_text(data)}): `grd run` of a one-command spec (`true`) against the bare "
        "flow a careful user writes (one Prefect flow, one task running `subprocess.run([\"true\"])`), both "
        "on the same API setting; times from the process's start, medians (spread):",
        "",
        "| API | side | to the command's start | to exit |",
        "|---|---|---|---|",
    ]
    for mode in modes:
        sides = data["api"][mode]
        for side, label in (("bare", "bare Prefect flow"), ("grd", "`grd run`")):
            lines.append(f"| {_API[mode]} | {label} | {_s(sides[side]['to_command_start_s'])} "
                         f"| {_s(sides[side]['to_exit_s'])} |")
        extra = sides["grd_minus_bare"]
        lines.append(f"| {_API[mode]} | grd minus bare (paired runs) "
                     f"| {_s(extra['to_command_start_s'], True)} | {_s(extra['to_exit_s'], True)} |")
    for side, title in (("grd", "`grd run`"), ("bare", "the bare flow")):
        lines += ["", f"| part of {title}'s attempt | " + " | ".join(_API[m] for m in modes) + " |",
                  "|---|" + "---|" * len(modes)]
        parts = [data["api"][mode][side]["parts"] for mode in modes]
        for index, part in enumerate(parts[0]):
            cells = " | ".join(_s(column[index]["s"]) for column in parts)
            lines.append(f"| {part['what']} | {cells} |")
    return "\n".join(lines)


def render_kill_latency(data: dict[str, Any]) -> str:
    config, during = data["config"], data["load_1m_during"]
    grd = [row for row in data["series"] if row["kind"] == "grd"]
    met = all(row["meets_target"] and row["survivors"] == 0 for row in grd)
    when = data.get("date", "date not recorded")
    lines = [
        f"Kill latency (`bench_kill_latency.py --trials {config['trials']}`, {when}, load "
        f"{during['min']:.1f}-{during['max']:.1f}, median {during['median']:.1f}; targets: p99 <= 30 ms "
        "on the SIGKILL path, <= grace + 30 ms on the TERM path, 0 survivors: "
        f"{'met in every containment mode' if met else '**not met**'}):",
        "",
        "| runner | trees | p50 ms | p99 ms | max ms | survivors (trees) |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["series"]:
        times = [row[key] for key in ("p50_ms", "p99_ms", "max_ms")]
        shown = " | ".join("-" if value is None else f"{value:.1f}" for value in times)
        lines.append(f"| {row['name']} | {row['trials']} | {shown} "
                     f"| {row['survivors']} ({row['trees_with_survivors']}) |")
    return "\n".join(lines)


def render_grd_run_kill(data: dict[str, Any]) -> str:
    gone, when = data["gone_after_kill_s"], data.get("date", "date not recorded")
    ends = (data["load_before"][0], data["load_after"][0])
    load = f"load {min(ends):.1f}-{max(ends):.1f}"
    return (
        f"`grd run` SIGKILLed (`bench_grd_run_kill.py --trials {data['trials']}`, {when}, {load}; a random "
        "0-1 s after its command's tree, a child and a `setsid` grandchild that handle SIGTERM like a "
        f"checkpointing job, said it is up): {data['survivors']} survivors in {data['trials']} trials, "
        f"{data['got_sigterm_first']} trees got SIGTERM first, the last member gone "
        f"{gone['p50'] * 1000:.0f} ms (p50) / {gone['p99'] * 1000:.0f} ms (p99) after the kill, and "
        f"{data['helpers_left']} processes that `grd run` had started (the ephemeral API server included) "
        "left behind."
    )


def render_sharded(data: dict[str, Any]) -> str:
    """Issue #34: a sharded save through grd >= 0.9x plain DCP with its own fsspec writer, same target."""
    ends = [*data["loadavg_before"][:1], *data["loadavg_after"][:1]]
    s3 = data.get("store", "local disk") != "local disk"
    where = f"a bucket of {data['store']}" if s3 else "the same directory"
    lines = [
        f"Sharded saves{' to S3' if s3 else ''} (`bench_sharded.py{' --store s3' if s3 else ''}`, "
        f"{data['date']}, load {min(ends):.1f}-{max(ends):.1f}, "
        f"{data['cpus']} CPUs; FSDP2 model + AdamW state on {data['results'][0]['ranks']} gloo ranks, "
        f"medians of {data['rounds']} rounds alternating which side goes first, the fastest and slowest in "
        "brackets; plain DCP is `torch.distributed.checkpoint.save` with its own `FsspecWriter` into "
        f"{where}; goal: grd at least 0.9{X} plain DCP's throughput):",
        "",
        "| state (all ranks) | grd `save_sharded`, MiB/s | plain DCP, MiB/s | grd / DCP |",
        "|---|---|---|---|",
    ]
    for row in data["results"]:
        size, runs = row["size_mib"], row.get("runs_s", {})

        def rate(seconds: float, size: float = size) -> float:
            return size / seconds

        lines.append(
            f"| {size:.0f} MiB | {row['grd_mib_s']:.0f}{_spread(runs.get('grd'), rate)} "
            f"| {row['dcp_mib_s']:.0f}{_spread(runs.get('dcp'), rate)} | {_goal(row['grd_vs_dcp'], 0.9)} |")
    blocked = [row for row in data["results"] if "async_blocked_share" in row]
    if blocked:
        parts = [f"{100 * row['async_blocked_share']:.1f}% at {row['size_mib']:.0f} MiB "
                 f"({_met(row['async_blocked_share'] <= 0.10)}; {row['async_written']} of "
                 f"{len(row['async_blocked_s'])} written)" for row in blocked]
        lines += ["", "Back to back (one `save_sharded_async` right after another on every rank, a loop "
                  "saving faster than the store), the median call blocks the loop (the slowest rank's) for "
                  + ", ".join(parts) + " of a synchronous `save_sharded` (goal at most 10%); a save still "
                  "waiting when a newer one comes is superseded on every rank alike."]
    return "\n".join(lines)


_FANOUT_SIDES = {
    "plain_dask": "plain Dask futures running `subprocess.run` (no grd)",
    "grd_dask": "grd on Dask (`runner: {dask: ...}`)",
    "grd_local": "grd on this machine (`max_parallel: 4`)",
    "plain_ray": "plain Ray tasks running `subprocess.run` (no grd)",
    "grd_ray": "grd on Ray (`runner: {ray: ..., num_cpus: 1}`)",
}


def _fanout(data: dict[str, Any], title: str, baseline: str) -> str:
    """A fan-out benchmark (bench/_fanout.py): per side, wall time, throughput, overhead, ratio to plain."""
    loads = [side["load_before"] for side in data["sides"].values()]
    lines = [
        f"{title}, {data['date'][:10]}, load before each side {min(loads):.2f}-{max(loads):.2f}, "
        f"{data['cpus']} cores shared by the cluster and grd; {data['commands']:,} commands of "
        f"`sleep {data['sleep_s']}`, ideal {data['ideal_wall_s']:g} s; one run; grd without Prefect; "
        f"overhead per command = wall {X} 4 / commands - the command's {data['sleep_s']} s):",
        "",
        "| side | wall | commands/s | overhead per command | wall / plain |",
        "|---|---|---|---|---|",
    ]
    for name, side in data["sides"].items():
        lines.append(
            f"| {_FANOUT_SIDES.get(name, name)} | {side['wall_s']:.1f} s | {side['throughput_per_s']:.1f} "
            f"| {side['overhead_per_command_s'] * 1000:.1f} ms | {side[baseline]:.2f}{X} |")
    return "\n".join(lines)


def render_dask(data: dict[str, Any]) -> str:
    return _fanout(data, f"Fan-out on Dask (`bench_dask.py`, {data['workers']} single-thread workers on "
                   "127.0.0.1", "wall_vs_plain_dask")


def render_ray(data: dict[str, Any]) -> str:
    return _fanout(data, f"Fan-out on Ray (`bench_ray.py`, {data['cpus_in_cluster']} CPUs on two nodes on "
                   "127.0.0.1", "wall_vs_plain_ray")


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "dask": render_dask,
    "ray": render_ray,
    "overhead": render_overhead,
    "scale": render_scale,
    "checkpoint": render_checkpoint,
    "s3": render_s3,
    "attempt_cost": render_attempt_cost,
    "kill_latency": render_kill_latency,
    "grd_run_kill": render_grd_run_kill,
    "sharded": render_sharded,
    "sharded_s3": render_sharded,
}


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
