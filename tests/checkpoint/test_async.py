"""save_async: snapshot now, write in the background one at a time, never wait for the write in flight (a
newer save supersedes one still waiting), failures surface on the next call."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, cast

import fsspec
import pytest
import torch

from grd_blocks.checkpoint import CheckpointEngine, RunCheckpoints
from grd_blocks.errors import StoreUnavailable
from tests.checkpoint.conftest import Backend, RecordingFS
from tests.fixtures.seaweed import SeaweedServer


class GatedFS(RecordingFS):
    """Holds every pipe_file until ``gate`` is set, so a test can observe a write in flight."""

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        super().__init__(fs)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self._count = threading.Lock()
        self.at_once = 0
        self.most_at_once = 0

    def __getattr__(self, name: str) -> Any:
        inner = super().__getattr__(name)
        if name != "pipe_file":
            return inner

        def gated(*args: Any, **kwargs: Any) -> Any:
            with self._count:
                self.at_once += 1
                self.most_at_once = max(self.most_at_once, self.at_once)
            self.entered.set()
            try:
                assert self.gate.wait(30), "test never opened the gate"
                return inner(*args, **kwargs)
            finally:
                with self._count:
                    self.at_once -= 1

        return gated


def test_save_async_snapshots_state_at_call_time(backend: Backend) -> None:
    run = backend.run()
    weights = torch.zeros(1000)
    run.save_async({"w": weights, "meta": {"lr": 0.1}}, step=1)
    weights.add_(5.0)  # the training loop goes on mutating its tensors
    run.flush()
    loaded = run.load()
    assert loaded is not None and torch.equal(loaded["w"], torch.zeros(1000))


def test_save_async_never_waits_for_the_write_in_flight_and_the_newest_save_supersedes_a_waiting_one(
    object_backend: Backend,
) -> None:
    engine = object_backend.engine()
    gated = GatedFS(engine.fs)
    run = RunCheckpoints(
        f"{object_backend.url}/gated", fs=cast(fsspec.AbstractFileSystem, gated), path=f"{engine.path}/gated"
    )
    run.save_async({"s": 1}, step=1)
    assert gated.entered.wait(30)  # step 1 is being written, held at the gate
    run.save_async({"s": 2}, step=2)  # returns with step 1's write still held: nothing waited for it
    run.save_async({"s": 3}, step=3)  # step 2 never started: superseded
    assert run._writer.in_flight and run.superseded == ["step_2"]
    gated.gate.set()
    run.flush()
    assert gated.most_at_once == 1  # one write at a time
    reader = engine.run("gated")  # an independent reader of what the store holds
    assert [ref.index for ref in reader.checkpoints()] == [1, 3]
    latest = reader.latest()
    assert latest is not None and latest.index == 3 and reader.load() == {"s": 3}


def test_save_async_without_a_step_numbers_past_the_saves_still_in_flight(object_backend: Backend) -> None:
    engine = object_backend.engine()
    gated = GatedFS(engine.fs)
    run = RunCheckpoints(
        f"{object_backend.url}/auto", fs=cast(fsspec.AbstractFileSystem, gated), path=f"{engine.path}/auto"
    )
    run.save_async({"s": 0})
    assert gated.entered.wait(30)
    run.save_async({"s": 1})  # step_0 is not committed yet: this one is still step_1, not a second step_0
    gated.gate.set()
    run.flush()
    reader = engine.run("auto")
    committed = [(ref.index, reader.load(step=ref.index)) for ref in reader.checkpoints()]
    assert committed == [(0, {"s": 0}), (1, {"s": 1})]


def test_a_loop_saving_faster_than_the_store_writes_commits_its_newest_state_and_latest_never_steps_back(
    tmp_path: Path,
) -> None:
    run = CheckpointEngine(str(tmp_path / "store")).run("fast")
    reader = CheckpointEngine(str(tmp_path / "store")).run("fast")  # separate handle, polling meanwhile
    seen: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            latest = reader.latest()
            if latest is not None:
                seen.append(latest.index)

    poller = threading.Thread(target=poll)
    poller.start()
    weights = torch.zeros(3 * 2**20)  # 12 MiB: two pieces, far slower to write than to copy
    try:
        for step in range(1, 31):
            weights.fill_(float(step))
            run.save_async({"w": weights}, step=step)
        run.flush()
    finally:
        stop.set()
        poller.join()
    committed = [ref.index for ref in reader.checkpoints()]
    assert committed[-1] == 30 and seen == sorted(seen)
    assert sorted(set(committed) | {int(name.split("_")[1]) for name in run.superseded}) == list(range(1, 31))
    loaded = reader.load()
    assert loaded is not None and torch.equal(loaded["w"], torch.full((3 * 2**20,), 30.0))
    assert all(reader.verify(ref) == [] for ref in reader.checkpoints())


def test_async_failure_is_raised_on_flush_and_then_cleared(object_backend: Backend) -> None:
    engine = object_backend.engine()
    good = engine.run("run")
    good.save({"s": 1}, step=1)
    failing = RecordingFS(engine.fs, fail={"pipe_file": OSError(errno.ENOSPC, "No space left on device")})
    run = RunCheckpoints(good.url, fs=cast(fsspec.AbstractFileSystem, failing), path=good.path)
    run.save_async({"s": 2}, step=2)
    with pytest.raises(StoreUnavailable, match="No space left") as info:
        run.flush()
    assert any("background save of step_2" in note for note in getattr(info.value, "__notes__", []))
    run.flush()  # reported once
    assert good.load() == {"s": 1}


def test_async_failure_is_raised_on_next_save(object_backend: Backend) -> None:
    engine = object_backend.engine()
    failing = RecordingFS(engine.fs, fail={"pipe_file": OSError(errno.ENOSPC, "No space left on device")})
    run = RunCheckpoints(
        f"{object_backend.url}/r", fs=cast(fsspec.AbstractFileSystem, failing), path=f"{engine.path}/r"
    )
    run.save_async({"s": 1}, step=1)
    with pytest.raises(StoreUnavailable):
        run.save({"s": 2}, step=2)


_SAVE_ASYNC_THEN_EXIT = """
import json, sys, torch
from grd_blocks.checkpoint import CheckpointEngine
run = CheckpointEngine(sys.argv[1], storage_options=json.loads(sys.argv[2])).run("exiting")
run.save_async({"w": torch.arange(int(sys.argv[3]), dtype=torch.float32)}, step=1)
"""  # and nothing else: no flush, the interpreter's exit has to finish the write

_EXIT_SIZE = 5 * 2**20  # 20 MiB of float32: three pieces, hashed and (on S3) sent on the thread pools


def _exit_right_after_save_async(url: str, storage_options: dict[str, Any]) -> None:
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _SAVE_ASYNC_THEN_EXIT, url, json.dumps(storage_options), str(_EXIT_SIZE)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0 and "failed before exit" not in done.stderr, done.stderr
    loaded = CheckpointEngine(url, storage_options=storage_options).load_checkpoint("exiting")
    assert loaded is not None and torch.equal(loaded["w"], torch.arange(_EXIT_SIZE, dtype=torch.float32))


def test_a_process_exiting_right_after_a_large_save_async_commits_it_on_disk(tmp_path: Path) -> None:
    _exit_right_after_save_async(str(tmp_path / "store"), {})


@pytest.mark.s3
def test_a_process_exiting_right_after_a_large_save_async_commits_it_on_s3(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    _exit_right_after_save_async(f"{s3_bucket}/store", s3_server.storage_options)


def _nice(tid: int | str) -> int:
    """A thread's nice value, read from /proc (field 19 of its stat)."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_the_background_writer_yields_the_cpu_to_the_training_loop(object_backend: Backend) -> None:
    """The write in flight runs on a thread 10 nice steps below the loop's (read from /proc while the write is
    held), so where both want the cores the loop's next staging copy gets them first."""
    engine = object_backend.engine()
    gated = GatedFS(engine.fs)
    run = RunCheckpoints(
        f"{object_backend.url}/nice", fs=cast(fsspec.AbstractFileSystem, gated), path=f"{engine.path}/nice"
    )
    run.save_async({"s": 1}, step=1)
    assert gated.entered.wait(30)
    try:
        writer = run._writer._thread  # the thread holding the write (its nice is read from /proc)
        assert writer is not None and writer.native_id is not None
        assert _nice(writer.native_id) == min(19, _nice(threading.get_native_id()) + 10)
    finally:
        gated.gate.set()
        run.flush()
