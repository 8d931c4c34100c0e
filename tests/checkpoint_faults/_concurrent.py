"""Processes for the concurrent-writer tests: writers that commit interleaved steps (or re-save one step) to
one run key, a sampler that reads LATEST.json and a reader that calls latest() and load() over and over while
they do.

Each function runs in a process of its own (``multiprocessing`` spawn context) and reports through a queue;
all of them start together at a ``Barrier``, so the writers really race.
"""

from __future__ import annotations

import multiprocessing.synchronize
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.checkpoint.payload.manifest import parse_latest
from grd_blocks.errors import CheckpointCorrupt


@dataclass
class Sampled:
    """What the sampler saw: every pointer read, in order, and what was wrong with any of them."""

    samples: int = 0
    verified: int = 0
    superseded: int = 0  # the target failed to verify because LATEST had moved on and retention removed it
    indexes_seen: int = 0
    decreases: list[tuple[int, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _open(url: str, options: dict[str, Any], keep_last: int | None) -> RunCheckpoints:
    return RunCheckpoints.from_url(url, storage_options=options, keep_last=keep_last)


def write_steps(url: str, options: dict[str, Any], keep_last: int | None, first: int, stride: int,
                count: int, start: multiprocessing.synchronize.Barrier, results: Any) -> None:
    """Commit steps ``first``, ``first + stride``, ... (``count`` of them), then report the last one."""
    try:
        run = _open(url, options, keep_last)
        start.wait()
        step = first
        for _ in range(count):
            run.save({"step": step, "writer": first}, step=step)
            step += stride
        results.put(("writer", first, step - stride, None))
    except BaseException:
        results.put(("writer", first, None, traceback.format_exc()))


def _pointer(run: RunCheckpoints) -> tuple[int, str] | None:
    try:
        data = run.fs.cat_file(f"{run.path}/LATEST.json")
    except FileNotFoundError:
        return None
    pointer = parse_latest(bytes(data), f"{run.url}/LATEST.json")  # torn or damaged: CheckpointCorrupt
    return pointer.index, pointer.dirname


def sample_latest(url: str, options: dict[str, Any], retention: bool,
                  start: multiprocessing.synchronize.Barrier, stop: multiprocessing.synchronize.Event,
                  results: Any) -> None:
    """Read LATEST.json until ``stop`` is set (and once more after): it must never decrease, never vanish or
    tear once it exists, and always name a checkpoint that verifies; with ``retention`` a target may be
    gone only once LATEST has moved past it."""
    seen = Sampled()
    try:
        run = _open(url, options, None)
        start.wait()
        last: int | None = None
        finished = False
        while not finished:
            finished = stop.is_set()  # one more full sample after the writers are done
            seen.samples += 1
            try:
                found = _pointer(run)
            except CheckpointCorrupt as exc:
                seen.failures.append(f"LATEST.json unreadable: {exc}")
                continue
            if found is None:
                if last is not None:
                    seen.failures.append(f"LATEST.json vanished after pointing at index {last}")
                continue
            index, name = found
            if last is not None and index < last:
                seen.decreases.append((last, index))
            last = index if last is None else max(last, index)
            seen.indexes_seen += 1
            problems = run.verify(name)
            if not problems:
                seen.verified += 1
                continue
            now = _pointer(run)
            if retention and now is not None and now[0] > index:
                seen.superseded += 1
            else:
                seen.failures.append(f"LATEST.json -> {name}, which does not verify: {problems}")
        results.put(("sampler", 0, seen, None))
    except BaseException:
        results.put(("sampler", 0, seen, traceback.format_exc()))


def resave_step(url: str, options: dict[str, Any], writer: int, step: int, count: int,
                start: multiprocessing.synchronize.Barrier, results: Any) -> None:
    """Save ``step`` again ``count`` times (a retry, or a zombie beside its retry, re-saving the same N)."""
    try:
        run = _open(url, options, None)
        start.wait()
        for round_ in range(count):
            weights = torch.full((256,), float(round_))
            run.save({"step": step, "writer": writer, "round": round_, "w": weights}, step=step)
        results.put(("writer", writer, count, None))
    except BaseException:
        results.put(("writer", writer, None, traceback.format_exc()))


@dataclass
class Read:
    """What the reader saw through the public API: every ``latest()`` and ``load()``, and anything wrong."""

    reads: int = 0
    loads: int = 0
    lowest_latest: int | None = None
    lowest_loaded: int | None = None
    failures: list[str] = field(default_factory=list)


def read_latest(url: str, options: dict[str, Any], start: multiprocessing.synchronize.Barrier,
                stop: multiprocessing.synchronize.Event, results: Any) -> None:
    """Call ``latest()`` and ``load()`` by turns until ``stop`` is set; record the lowest step each gave."""
    seen = Read()
    try:
        run = _open(url, options, None)
        start.wait()
        while not stop.is_set():
            try:
                latest = run.latest()
                seen.reads += 1
                index = -1 if latest is None else latest.index
                seen.lowest_latest = index if seen.lowest_latest is None else min(seen.lowest_latest, index)
                state = run.load()
                seen.loads += 1
                step = -1 if state is None else int(state["step"])
                seen.lowest_loaded = step if seen.lowest_loaded is None else min(seen.lowest_loaded, step)
            except Exception as exc:  # every failure a user would meet is counted
                seen.failures.append(f"{type(exc).__name__}: {exc}")
        results.put(("reader", 0, seen, None))
    except BaseException:
        results.put(("reader", 0, seen, traceback.format_exc()))
