"""Checkpoint store benchmarks: local save/load vs bare torch.save+fsync+rename, async blocked time vs sync,
and latest() requests/time with 1, 100 and 10,000 checkpoints (pointer vs a full scan).

Async: the loop is blocked while the state is copied to host memory. The first ``save_async`` of a run
allocates its snapshot buffers (``first_*``); later ones copy into the buffers the previous save released
(``async_blocked_s``, the median over the rest), which is the steady state of a training loop. It is timed
for a state of one tensor and for a model-shaped state of the same size (``model_state``: 1,200 tensors, a
state_dict and Adam's state for it), where the per-tensor cost of staging shows.

Save/load pairs run in turns (grd, baseline, grd, ...) and report medians; each side deletes its save from
two turns before (untimed), as a run that keeps its last two checkpoints does, so both write into freed blocks
like ``dd`` (on the benchmark's virtual disk a write into never-used blocks is several times slower, for
both). The baselines are what a careful user writes: ``torch.save(state, f)`` straight into the open file,
flush, fsync, rename, fsync the directory; ``torch.load(path, mmap=True, weights_only=True)``. grd's load
verifies every byte's digest and then memory-maps the verified file, so ``*_touch`` columns time reading every
tensor once on both sides: with the page cache warm (both files read once before, as right after a save),
and, when the benchmark runs as root, with the page cache dropped before every run (a resume on a fresh
machine; ``*_cold_*``). Every run's seconds are kept in ``runs_s``. The disk's
raw sequential write (``dd oflag=direct``, same directory, same run) is measured beside them, and the peak RSS
of a save and of a load on each side is read in a child process of its own (``VmHWM`` growth over the RSS
once the state is held, the peak reset through ``/proc/self/clear_refs``).

Run: .venv/bin/python bench/bench_checkpoint.py [--quick]   -> bench/results/checkpoint.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import fsspec
import torch

from grd_blocks.checkpoint import CheckpointEngine, RunCheckpoints
from grd_blocks.checkpoint.payload.hashes import save_algorithm
from grd_blocks.checkpoint.payload.manifest import FileEntry, LatestPointer, Manifest, now_iso, sha256_hex

MiB = 1024 * 1024
RESULTS = pathlib.Path(__file__).parent / "results" / "checkpoint.json"


def _median(func: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _baseline_save(directory: pathlib.Path, state: dict[str, Any], name: str = "state.pt") -> None:
    """torch.save + fsync + rename + fsync(dir): what a careful script does by hand. Each call writes a new
    ``name`` (as grd writes a new step directory), so neither side pays for deleting the previous file."""
    tmp = directory / f".tmp-{name}"
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / name)
    fd = os.open(directory, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def _interleaved(
    funcs: dict[str, Callable[[], object]],
    repeats: int,
    after: dict[str, Callable[[], object]] | None = None,
    before: Callable[[], object] | None = None,
    runs: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """Median seconds of each function, run in turns (a, b, a, b, ...) so machine load drifts hit both;
    ``{name}_best`` is the fastest run (the least disturbed by other processes on a busy machine). ``after``
    holds untimed clean-ups run after each timed call of the function of the same name; ``before`` runs,
    untimed, before every timed call (dropping the page cache); ``runs`` receives every run's seconds."""
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            if before is not None:
                before()
            start = time.perf_counter()
            func()
            times[name].append(time.perf_counter() - start)
            if after and name in after:
                after[name]()
    if runs is not None:
        runs.update({name: [round(value, 5) for value in values] for name, values in times.items()})
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {**medians, **{f"{name}_best": min(values) for name, values in times.items()}}


_DROP_CACHES = pathlib.Path("/proc/sys/vm/drop_caches")


def _can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access(_DROP_CACHES, os.W_OK)


def _drop_caches() -> None:
    """Write back dirty pages and drop the page cache (root only): the next read comes from the disk."""
    os.sync()
    _DROP_CACHES.write_text("3\n")


def _touch(state: dict[str, Any] | None) -> None:
    """Read every byte of every tensor (grd's load maps the verified file; pages come in on first use)."""
    assert state is not None
    for value in state.values():
        if isinstance(value, torch.Tensor):
            value.sum()


def bench_save_load(root: pathlib.Path, size_mib: int, repeats: int) -> dict[str, Any]:
    state = {"w": torch.randn(size_mib * MiB // 4)}
    run = CheckpointEngine(str(root / f"store-{size_mib}")).run("bench")
    base_dir = root / f"baseline-{size_mib}"
    base_dir.mkdir()
    step = iter(range(10**6))
    written: dict[str, list[int]] = {"grd": [], "baseline": []}

    def saved(side: str) -> int:
        written[side].append(next(step))
        return written[side][-1]

    def keep_two(side: str) -> None:
        """Untimed: delete this side's save from two turns ago, as a run keeping its last two checkpoints
        does (on this virtual disk a write into never-used blocks runs at a fraction of one into freed ones,
        and dd, which rewrites one file, measures the latter)."""
        if len(written[side]) > 2:
            old = written[side][-3]
            if side == "grd":
                run.delete(f"step_{old}")
            else:
                (base_dir / f"state-{old}.pt").unlink()

    runs: dict[str, list[float]] = {}
    saves = _interleaved(
        {
            "grd": lambda: run.save(state, step=saved("grd")),
            "baseline": lambda: _baseline_save(base_dir, state, f"state-{saved('baseline')}.pt"),
        },
        repeats,
        after={"grd": lambda: keep_two("grd"), "baseline": lambda: keep_two("baseline")},
        runs=runs,
    )
    runs = {f"{name}_save": values for name, values in runs.items()}
    base_path = base_dir / "state.pt"
    _baseline_save(base_dir, state)

    def grd_touch() -> None:
        _touch(run.load())

    def baseline_touch() -> None:
        _touch(torch.load(base_path, mmap=True, weights_only=True))

    grd_touch()  # once untimed: the page cache holds both files, as after a save (warm cache)
    baseline_touch()
    warm: dict[str, list[float]] = {}
    loads = _interleaved(
        {
            "grd": run.load,
            "baseline": lambda: torch.load(base_path, mmap=True, weights_only=True),
            "grd_touch": grd_touch,
            "baseline_touch": baseline_touch,
        },
        repeats,
        runs=warm,
    )
    runs.update({f"{name}_load_warm": values for name, values in warm.items()})
    cold_figures: dict[str, Any] = {}
    if _can_drop_caches():
        cold: dict[str, list[float]] = {}
        colds = _interleaved({"grd_touch": grd_touch, "baseline_touch": baseline_touch}, repeats,
                             before=_drop_caches, runs=cold)
        runs.update({f"{name}_load_cold": values for name, values in cold.items()})
        cold_figures = {
            "grd_load_touch_cold_s": colds["grd_touch"],
            "baseline_load_touch_cold_s": colds["baseline_touch"],
            "load_touch_cold_ratio": colds["grd_touch"] / colds["baseline_touch"],
        }
    shutil.rmtree(root / f"store-{size_mib}")
    shutil.rmtree(base_dir)
    disk_s = _dd_direct(root, size_mib)
    return {
        "size_mib": size_mib,
        "disk_direct_write_s": disk_s,
        "disk_direct_write_mib_s": size_mib / disk_s,
        "grd_save_mib_s": size_mib / saves["grd"],
        "baseline_save_mib_s": size_mib / saves["baseline"],
        "grd_save_vs_disk": (size_mib / saves["grd"]) / (size_mib / disk_s),
        "grd_save_vs_baseline": saves["baseline"] / saves["grd"],
        **_peak_rss(root, size_mib),
        "grd_save_s": saves["grd"],
        "baseline_save_s": saves["baseline"],
        "save_ratio": saves["grd"] / saves["baseline"],
        "grd_load_s": loads["grd"],
        "baseline_load_s": loads["baseline"],
        "load_ratio": loads["grd"] / loads["baseline"],
        "grd_load_touch_s": loads["grd_touch"],
        "baseline_load_touch_s": loads["baseline_touch"],
        "load_touch_ratio": loads["grd_touch"] / loads["baseline_touch"],
        "best_save_ratio": saves["grd_best"] / saves["baseline_best"],
        "best_load_ratio": loads["grd_best"] / loads["baseline_best"],
        "best_load_touch_ratio": loads["grd_touch_best"] / loads["baseline_touch_best"],
        **cold_figures,
        "runs_s": runs,
    }


def _dd_direct(root: pathlib.Path, size_mib: int) -> float:
    """Seconds for ``dd`` to write ``size_mib`` MiB with O_DIRECT (and fsync) into ``root``: the disk's raw
    sequential write, the ceiling a save can approach (median of 3)."""
    target = root / "dd.bin"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=8M", f"count={size_mib // 8}",
                        "oflag=direct", "conv=fsync", "status=none"], check=True)
        times.append(time.perf_counter() - start)
        target.unlink()
    return statistics.median(times)


_RSS_CHILD = """
import json, os, sys, torch
from grd_blocks.checkpoint import CheckpointEngine

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise SystemExit(f"no {field} in /proc/self/status")

side, op, root, mib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
path = os.path.join(root, "rss-base.pt")
run = CheckpointEngine(os.path.join(root, "rss-store")).run("rss")
state = {"w": torch.randn(mib * 1024 * 1024 // 4)} if op == "save" else None
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak (VmHWM) to the RSS now: ru_maxrss would carry the parent's over exec
before = status("VmRSS")
if op == "save" and side == "grd":
    run.save(state, step=0)
elif op == "save":
    with open(path, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
elif side == "grd":
    loaded = run.load()
    loaded["w"].sum()
else:
    loaded = torch.load(path, mmap=True, weights_only=True)
    loaded["w"].sum()
print(json.dumps(status("VmHWM") - before))
"""


def _peak_rss(root: pathlib.Path, size_mib: int) -> dict[str, float]:
    """Peak RSS growth (MiB) of one save and one load, grd and the baseline, each in a fresh child process
    (the saves first: the loads read what they wrote)."""
    out: dict[str, float] = {}
    for op in ("save", "load"):
        for side in ("grd", "baseline"):
            done = subprocess.run([sys.executable, "-c", _RSS_CHILD, side, op, str(root), str(size_mib)],
                                  check=True, capture_output=True, text=True)
            out[f"{side}_{op}_peak_rss_mib"] = round(float(done.stdout.strip().splitlines()[-1]), 1)
    shutil.rmtree(root / "rss-store")
    (root / "rss-base.pt").unlink()
    return out


MODEL_PARAMS = 300
"""The model-shaped async state: this many weights of mixed sizes, with Adam's two moments and step each."""


def model_state(size_mib: int, params: int = MODEL_PARAMS) -> dict[str, Any]:
    """A training loop's state of about ``size_mib`` MiB: a model's state_dict of ``params`` float32 weights
    (sizes from 0.2x to 1.8x the mean) and an Adam optimizer's state_dict for it (two moments and a 0-dim
    step per weight): ``4 * params`` tensors, as a real loop hands ``save_async``."""
    mean = size_mib * MiB // 4 // 3 // params
    sizes = [max(16, int(mean * (0.2 + 1.6 * (i % 7) / 6))) for i in range(params)]
    moments = {i: {"step": torch.tensor(float(i)), "exp_avg": torch.randn(size),
                   "exp_avg_sq": torch.randn(size)} for i, size in enumerate(sizes)}
    return {"model": {f"layers.{i}.weight": torch.randn(size) for i, size in enumerate(sizes)},
            "optimizer": {"state": moments, "param_groups": [{"lr": 1e-3, "params": list(range(params))}]}}


def bench_async(root: pathlib.Path, size_mib: int, repeats: int, shape: str = "one tensor",
                params: int = MODEL_PARAMS) -> dict[str, Any]:
    """Blocked time of ``save_async`` against a synchronous ``save`` of the same state: ``shape`` is "one
    tensor" (a single float32 tensor) or "model" (``model_state`` of ``params`` weights)."""
    state = model_state(size_mib, params) if shape == "model" else {"w": torch.randn(size_mib * MiB // 4)}
    run = CheckpointEngine(str(root / "async")).run("bench")
    step = iter(range(10**6))
    sync = _median(lambda: run.save(state, step=next(step)), repeats)
    blocked = []
    for _ in range(repeats):
        run.flush()
        start = time.perf_counter()
        run.save_async(state, step=next(step))
        blocked.append(time.perf_counter() - start)
    run.flush()
    back_to_back = []  # a loop saving faster than the disk: one save_async right after another
    first = next(step)
    for index in range(first, first + 3 * repeats):
        start = time.perf_counter()
        run.save_async(state, step=index)
        back_to_back.append(time.perf_counter() - start)
    run.flush()
    written = [ref.index for ref in run.checkpoints() if ref.index >= first]
    shutil.rmtree(root / "async")
    async_blocked = statistics.median(blocked[1:])
    back_to_back_blocked = statistics.median(back_to_back)
    return {
        "size_mib": size_mib,
        "state": shape,
        "tensors": 4 * params if shape == "model" else 1,
        "sync_save_s": sync,
        "async_blocked_s": async_blocked,
        "blocked_ratio": async_blocked / sync,
        "back_to_back_saves": len(back_to_back),
        "back_to_back_blocked_s": back_to_back_blocked,
        "back_to_back_blocked_max_s": max(back_to_back),
        "back_to_back_ratio": back_to_back_blocked / sync,
        "back_to_back_written": len(written),
        "back_to_back_last_written": written[-1] == first + len(back_to_back) - 1,
        "first_async_blocked_s": blocked[0],
        "first_blocked_ratio": blocked[0] / sync,
    }


class CountingFS:
    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self._fs = fs
        self.counts: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if name in {"cat_file", "info", "ls", "find", "exists", "pipe_file", "open"}:

            def call(*args: Any, **kwargs: Any) -> Any:
                self.counts[name] += 1
                return attr(*args, **kwargs)

            return call
        return attr


def _populate(fs: fsspec.AbstractFileSystem, path: str, count: int) -> None:
    """``count`` tiny committed checkpoints written directly (cheap: no fsync), plus LATEST.json."""
    payload = b'{"s": 0}'
    entry = FileEntry(size=len(payload), whole=sha256_hex(payload))  # a format-1 entry: cheap to write
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    batch: dict[str, bytes] = {}
    for index in range(count):
        directory = f"{path}/step_{index}"
        manifest = Manifest(
            unit="step",
            index=index,
            files={"state.json": entry},
            payload_format="json",
            handlers={"s": "plain"},
            created_at=now_iso(),
            writer="bench",
        )
        batch[f"{directory}/state.json"] = payload
        batch[f"{directory}/MANIFEST.json"] = manifest.to_bytes()
    if local:  # plain writes, no fsync: this is set-up, not what is measured
        for file_path, data in batch.items():
            os.makedirs(os.path.dirname(file_path), exist_ok=True)
            pathlib.Path(file_path).write_bytes(data)
    else:
        fs.pipe(batch)
    pointer = LatestPointer(
        unit="step", index=count - 1, dirname=f"step_{count - 1}", created_at=now_iso(), writer="bench"
    )
    fs.pipe_file(f"{path}/LATEST.json", pointer.to_bytes())


def bench_latest(backend: str, url: str, count: int) -> dict[str, Any]:
    engine = CheckpointEngine(url)
    path = f"{engine.path}/run"
    _populate(engine.fs, path, count)
    counting = CountingFS(engine.fs)
    run = RunCheckpoints(f"{url}/run", fs=cast(fsspec.AbstractFileSystem, counting), path=path)
    repeats = 20 if count < 10_000 else 5
    pointer_s = _median(run.latest, repeats)
    counting.counts.clear()
    ref = run.latest()
    assert ref is not None and ref.index == count - 1
    pointer_requests = sum(counting.counts.values())
    engine.fs.rm_file(f"{path}/LATEST.json")  # baseline: find the newest by listing the run
    scan_s = _median(run.latest, 3)
    counting.counts.clear()
    run.latest()
    scan_requests = sum(counting.counts.values())
    store = getattr(engine.fs, "store", None)
    if isinstance(store, dict):  # memory fs: drop keys directly (its recursive rm is quadratic)
        for key in [key for key in store if key.startswith(path)]:
            del store[key]
    else:
        engine.fs.rm(path, recursive=True)
    return {
        "backend": backend,
        "checkpoints": count,
        "latest_s": pointer_s,
        "latest_requests": pointer_requests,
        "scan_s": scan_s,
        "scan_requests": scan_requests,
        "scan_over_latest": scan_s / pointer_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 MiB only")
    parser.add_argument("--sizes", default="64,512,4096", help="state sizes in MiB for save and load")
    parser.add_argument("--async-only", action="store_true",
                        help="only save_async's blocked time, model-shaped state; prints, writes nothing")
    parser.add_argument("--params", type=int, default=MODEL_PARAMS,
                        help="weights of the model-shaped state (4 tensors each)")
    args = parser.parse_args()
    sizes = [64] if args.quick else [int(size) for size in args.sizes.split(",")]
    repeats = 7
    import logging

    if args.async_only:  # e.g. the same command on two checkouts, alternating, for an A/B of staging
        with tempfile.TemporaryDirectory(dir=os.environ.get("GRD_BENCH_DIR")) as tmp:
            for size in sizes:
                print(json.dumps(bench_async(pathlib.Path(tmp), size, repeats, "model", args.params)))
        return

    logging.getLogger("grd.checkpoint").setLevel(logging.ERROR)  # the scan baseline warns by design
    results: dict[str, Any] = {
        "quick": args.quick,
        "repeats": repeats,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "loadavg_start": list(os.getloadavg()),
        "digest": save_algorithm(),  # the payload digest grd's saves used (GRD_CHECKPOINT_DIGEST overrides)
    }
    with tempfile.TemporaryDirectory(dir=os.environ.get("GRD_BENCH_DIR")) as tmp:
        root = pathlib.Path(tmp)
        results["save_load"] = [bench_save_load(root, size, repeats) for size in sizes]
        results["async"] = [bench_async(root, size, max(repeats, 3), shape)
                            for shape in ("one tensor", "model") for size in sizes if size <= 512]
        latest = []
        for count in (1, 100, 10_000):
            latest.append(bench_latest("local", str(root / f"latest-{count}"), count))
            latest.append(bench_latest("memory", f"memory://grd-bench-{count}", count))
        results["latest"] = latest
    results["loadavg_end"] = list(os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
