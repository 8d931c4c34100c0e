"""save_async: snapshot now, write in the background, one in flight, failures surface on the next call."""

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

    def __getattr__(self, name: str) -> Any:
        inner = super().__getattr__(name)
        if name != "pipe_file":
            return inner

        def gated(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            assert self.gate.wait(30), "test never opened the gate"
            return inner(*args, **kwargs)

        return gated


def test_save_async_snapshots_state_at_call_time(backend: Backend) -> None:
    run = backend.run()
    weights = torch.zeros(1000)
    run.save_async({"w": weights, "meta": {"lr": 0.1}}, step=1)
    weights.add_(5.0)  # the training loop goes on mutating its tensors
    run.flush()
    loaded = run.load()
    assert loaded is not None and torch.equal(loaded["w"], torch.zeros(1000))


def test_at_most_one_async_write_in_flight(object_backend: Backend) -> None:
    engine = object_backend.engine()
    gated = GatedFS(engine.fs)
    run = RunCheckpoints(
        f"{object_backend.url}/gated", fs=cast(fsspec.AbstractFileSystem, gated), path=f"{engine.path}/gated"
    )
    run.save_async({"s": 1}, step=1)
    assert gated.entered.wait(30)
    second_done = threading.Event()

    def second() -> None:
        run.save_async({"s": 2}, step=2)
        second_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not second_done.wait(0.2)  # blocked behind the first write (a bounded negative check)
    assert run._writer.in_flight
    gated.gate.set()
    thread.join(30)
    assert second_done.is_set()
    run.flush()
    assert [ref.index for ref in run.checkpoints()] == [1, 2]


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
