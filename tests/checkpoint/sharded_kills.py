"""Kill trials of sharded saves (test_sharded.py on local disk, test_sharded_s3.py on SeaweedFS S3).

Each trial starts two real rank processes saving back to back (``save_loop``, synchronous or
``save_sharded_async``); once the trial's first commit is in, after a random delay, either one rank is
SIGKILLed (chosen at random; the survivor meets the dead peer in a collective and exits on its own, or is
SIGKILLed too if it has not within ``SURVIVOR_S``) or every rank at once. Then an independent reader
(``judge``, sharing no code with the writer) checks every committed checkpoint and where LATEST.json points;
the latest is loaded on 1 rank in the test's own process every trial, and on 2 ranks every ``two_every``
trials.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from grd_blocks.checkpoint import RunCheckpoints
from tests.checkpoint import sharded_procs

SURVIVOR_S = 20.0
"""A safety net: how long a survivor may take to exit on its own after its peer was killed."""


@dataclass(frozen=True)
class Judged:
    """What the independent reader found after a trial."""

    torn: dict[str, str]
    """Committed checkpoints whose files do not match their manifest (must stay empty)."""
    latest: str | None
    latest_index: int
    latest_whole: bool
    """LATEST.json names a committed checkpoint that the reader found whole."""
    leftovers: bool
    """A killed save's uncommitted files are there (invisible to readers)."""


def run_trials(trials: int, seed: int, url: str, shard: int, judge: Callable[[], Judged],
               storage_options: dict[str, Any] | None = None, two_every: int = 10) -> dict[str, Any]:
    """``trials`` kill trials against ``url``; AssertionError on any torn checkpoint, a LATEST.json that
    is not whole or moved backwards, or a load that does not give the latest step; the counts."""
    rng = random.Random(seed)
    env = {"TEST_STORAGE_OPTIONS": json.dumps(storage_options or {})}
    counts: Counter[str] = Counter()
    previous, started = -1, time.monotonic()
    for trial in range(trials):
        mode, pattern = ("sync", "async")[trial % 2], ("one", "all")[(trial // 2) % 2]
        ranks = sharded_procs.start(2, "save_loop", url, str(shard), mode, env=env)
        try:
            first = ranks.processes[0].stdout
            assert first is not None
            line = first.readline()  # the trial's first commit
            assert line.startswith("RESULT "), (line, ranks.processes[0].communicate()[1] if not line else "")
            victim = rng.randrange(2)
            with contextlib.suppress(subprocess.TimeoutExpired):  # the random moment (it never exits alone)
                ranks.processes[victim].wait(timeout=rng.uniform(0.0, 0.5))
            if pattern == "all":
                for process in ranks.processes:
                    process.send_signal(signal.SIGKILL)
            else:
                ranks.processes[victim].send_signal(signal.SIGKILL)
                survivor = ranks.processes[1 - victim]
                try:
                    survivor.communicate(timeout=SURVIVOR_S)
                    counts["survivor exited on its own"] += 1
                except subprocess.TimeoutExpired:
                    counts["survivor killed after 20 s"] += 1
        finally:
            ranks.kill()
        counts[f"{mode} {pattern}"] += 1
        found = judge()
        assert found.torn == {}, (trial, mode, pattern, found)
        assert found.latest_whole and found.latest_index >= previous, (trial, mode, pattern, found, previous)
        previous = found.latest_index
        counts["left an uncommitted save"] += found.leftovers
        state: dict[str, Any] = {"weights": torch.zeros(2 * shard), "step": -1}
        ref = RunCheckpoints.from_url(url, storage_options=storage_options).load_sharded(state)
        assert ref is not None and ref.name == found.latest, (trial, ref, found)
        assert set(state["weights"].tolist()) == {float(previous)} and state["step"] == previous, (
            trial, mode, pattern, found, sorted(set(state["weights"].tolist()))[:5], state["step"])
        counts["loaded on 1 rank"] += 1
        if trial % two_every == two_every - 1 or trial == trials - 1:
            loaded = sharded_procs.run(2, "load_latest", url, str(shard), env=env)
            assert {(r["loaded"], tuple(r["values"]), r["step"]) for r in loaded.results} == {
                (found.latest, (float(previous),), previous)}, (trial, loaded.results)
            counts["loaded on 2 ranks"] += 1
    summary = {"trials": trials, "torn": 0, "latest step": previous,
               "wall s": round(time.monotonic() - started, 1), **counts}
    print(f"kill trials on {url}: {summary}")
    return summary
