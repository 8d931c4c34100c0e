"""Several writer processes on one run key (a zombie attempt beside its retry, or worse): LATEST.json never
moves backwards, always names a checkpoint that verifies, and ends at the newest committed step; retention
never deletes the checkpoint LATEST names nor the newest one. Writers re-saving one step never make
``latest()`` or ``load()`` of another process step back to an older checkpoint.

Real processes (spawned), real local disk and a real SeaweedFS S3 server (which honours conditional writes:
tests/checkpoint/test_pointer.py). Writer ``w`` of ``n`` commits steps ``w, w + n, w + 2n, ...``, so every
step is committed by exactly one writer and the writers interleave; a separate sampler process reads
LATEST.json over and over while they run.
"""

from __future__ import annotations

import multiprocessing
import queue
from pathlib import Path
from typing import Any

import pytest

from grd_blocks.checkpoint import RunCheckpoints
from tests.checkpoint_faults._concurrent import (
    Read,
    Sampled,
    read_latest,
    resave_step,
    sample_latest,
    write_steps,
)
from tests.fixtures.seaweed import SeaweedServer

ROUNDS = 200
"""Checkpoints each writer commits."""
KEEP_LAST = 2
_WAIT_S = 240.0  # bound on waiting for a process's report (a hung writer fails the test, not the session)


def _run_together(writers: list[tuple[Any, ...]], watcher: tuple[Any, ...], stop: Any, results: Any
                  ) -> tuple[list[Any], Any]:
    """Start each writer ``(target, args)`` and the watcher together; once every writer reported, set ``stop``
    and wait for the watcher's report. (each writer's value, what the watcher saw); every process is joined
    (killed past the bound) before this returns."""
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=target, args=args) for target, args in [*writers, watcher]]
    for proc in procs:
        proc.start()
    values: list[Any] = []
    try:
        for _ in writers:
            kind, _who, value, error = results.get(timeout=_WAIT_S)
            assert kind == "writer" and error is None, error
            values.append(value)
        stop.set()
        kind, _, seen, error = results.get(timeout=_WAIT_S)
        assert kind != "writer" and error is None, error
    except queue.Empty:
        pytest.fail("a writer or the watcher did not report within the bound")
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=_WAIT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return values, seen


def _race(
    url: str, options: dict[str, Any], writers: int, keep_last: int | None
) -> tuple[Sampled, list[int]]:
    """Run ``writers`` writers and the sampler to the end; (what the sampler saw, each writer's last step)."""
    context = multiprocessing.get_context("spawn")
    start, stop, results = context.Barrier(writers + 1), context.Event(), context.Queue()
    steps = [(write_steps, (url, options, keep_last, w, writers, ROUNDS, start, results))
             for w in range(writers)]
    sampler = (sample_latest, (url, options, keep_last is not None, start, stop, results))
    lasts, sampled = _run_together(steps, sampler, stop, results)
    assert isinstance(sampled, Sampled)
    return sampled, lasts


def _check(url: str, options: dict[str, Any], writers: int, keep_last: int | None) -> None:
    sampled, lasts = _race(url, options, writers, keep_last)
    assert sampled.failures == [], sampled.failures[:5]
    assert sampled.decreases == [], f"LATEST.json moved backwards: {sampled.decreases[:5]}"
    assert sampled.verified > 0 and sampled.indexes_seen == sampled.verified + sampled.superseded
    newest = writers * ROUNDS - 1
    assert max(lasts) == newest
    run = RunCheckpoints.from_url(url, storage_options=options)
    latest = run.latest()
    assert latest is not None and latest.index == newest, "LATEST.json ended behind the newest commit"
    assert run.verify(latest) == [] and run.load() == {"step": newest, "writer": newest % writers}
    steps = [ref.index for ref in run.checkpoints()]
    if keep_last is None:
        assert steps == list(range(writers * ROUNDS))
    else:  # the newest is kept; at most one checkpoint per other writer committed after the last pruning
        assert newest in steps and len(steps) <= keep_last + writers - 1, steps


@pytest.mark.parametrize("keep_last", [None, KEEP_LAST], ids=["all-kept", "keep-last-2"])
@pytest.mark.parametrize("writers", [2, 4])
def test_latest_is_monotonic_under_concurrent_writers_on_local_disk(
    tmp_path: Path, writers: int, keep_last: int | None
) -> None:
    _check(str(tmp_path / "store" / "run"), {}, writers, keep_last)


@pytest.mark.s3
@pytest.mark.parametrize("keep_last", [None, KEEP_LAST], ids=["all-kept", "keep-last-2"])
@pytest.mark.parametrize("writers", [2, 4])
def test_latest_is_monotonic_under_concurrent_writers_on_s3(
    s3_server: SeaweedServer, s3_bucket: str, writers: int, keep_last: int | None
) -> None:
    _check(f"{s3_bucket}/store/run", dict(s3_server.storage_options), writers, keep_last)


RESAVES = 60
"""Times each writer re-saves the same step."""


def _check_resaves(url: str, options: dict[str, Any], writers: int) -> None:
    """``writers`` processes re-save step 5 over and over while a reader calls ``latest()`` and ``load()``:
    the reader never sees anything older than step 5, nor an error; the step ends as a writer's last save."""
    run = RunCheckpoints.from_url(url, storage_options=options)
    for step in range(6):
        run.save({"step": step, "writer": -1, "round": -1}, step=step)
    context = multiprocessing.get_context("spawn")
    start, stop, results = context.Barrier(writers + 1), context.Event(), context.Queue()
    resavers = [(resave_step, (url, options, w, 5, RESAVES, start, results)) for w in range(writers)]
    _, read = _run_together(resavers, (read_latest, (url, options, start, stop, results)), stop, results)
    assert isinstance(read, Read)
    assert read.reads > 0 and read.loads > 0
    assert read.failures == [], read.failures[:5]
    assert (read.lowest_latest, read.lowest_loaded) == (5, 5), "latest()/load() stepped back during re-saves"
    final = run.load()
    assert final is not None and final["step"] == 5 and final["round"] == RESAVES - 1
    latest = run.latest()
    assert latest is not None and latest.index == 5 and run.verify(latest) == []


@pytest.mark.parametrize("writers", [1, 2])
def test_latest_never_steps_back_while_a_step_is_re_saved_on_local_disk(tmp_path: Path, writers: int) -> None:
    _check_resaves(str(tmp_path / "store" / "run"), {}, writers)


@pytest.mark.s3
@pytest.mark.parametrize("writers", [1, 2])
def test_latest_never_steps_back_while_a_step_is_re_saved_on_s3(
    s3_server: SeaweedServer, s3_bucket: str, writers: int
) -> None:
    _check_resaves(f"{s3_bucket}/store/resave", dict(s3_server.storage_options), writers)
