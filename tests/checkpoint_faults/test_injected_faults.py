"""A fault at ANY single I/O step of a save leaves the previous latest loadable and the next save working.

Uses ``FaultInjector`` (a mock of a fault no real component can place deterministically; see faulty_fs.py)
over real storage: local disk and SeaweedFS S3. For every step N of a ``save`` (payload, manifest,
LATEST.json,
retention's listing and deletes) the save fails at step N, then a clean reader checks the store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.errors import StoreUnavailable
from tests.checkpoint_faults._states import state_for
from tests.checkpoint_faults.faulty_fs import FaultInjector, Mode
from tests.fixtures.seaweed import SeaweedServer

KEEP_LAST = 2


def _prepare(url: str, target: fsspec.AbstractFileSystem, run_key: str) -> CheckpointEngine:
    clean = CheckpointEngine(url, fs=target, keep_last=KEEP_LAST)
    clean.save_checkpoint(run_key, state=state_for(0), step=0)
    clean.save_checkpoint(run_key, state=state_for(1), step=1)
    return clean


def _count_steps(url: str, target: fsspec.AbstractFileSystem) -> list[tuple[str, str]]:
    _prepare(url, target, "count")
    counter = FaultInjector(target)
    counting = CheckpointEngine(url, fs=counter, keep_last=KEEP_LAST)
    counting.save_checkpoint("count", state=state_for(2), step=2)
    return counter.calls


def _fail_every_step(url: str, make_target: Callable[[], fsspec.AbstractFileSystem], mode: Mode) -> None:
    steps = _count_steps(url, make_target())
    assert any(name == "pipe_file" for name, _ in steps), steps
    for n in range(1, len(steps) + 1):
        target = make_target()
        run_key = f"fault-{mode}-{n}"
        clean = _prepare(url, target, run_key)
        injector = FaultInjector(target, fail_at=n, mode=mode)
        faulty = CheckpointEngine(url, fs=injector, keep_last=KEEP_LAST)
        where = f"fault at step {n}/{len(steps)}"
        try:
            faulty.save_checkpoint(run_key, state=state_for(2), step=2)
            raised: StoreUnavailable | None = None
        except StoreUnavailable as exc:
            raised = exc
        assert injector.fired is not None, f"{where}: the save made fewer calls than counted ({steps})"
        where = f"{where} ({injector.fired[0]} {injector.fired[1]})"
        if raised is not None:
            assert url.rstrip("/").split("://")[-1] in str(raised) or url in str(raised), (where, str(raised))
            assert "injected fault" in str(raised), (where, str(raised))
        reader = CheckpointEngine(url, fs=make_target())
        ref = reader.latest_checkpoint(run_key)
        assert ref is not None and ref.index in (1, 2), (where, ref)
        if raised is not None and ref.index == 2:
            # the save failed after its manifest committed: step 2 must then be complete
            assert reader.run(run_key).verify(ref) == [], where
        assert reader.load_checkpoint(run_key) == state_for(ref.index), where
        assert reader.load_checkpoint(run_key, step=1) == state_for(1), where
        # the retry of the same step, then the next one, work with the store as the fault left it
        clean.save_checkpoint(run_key, state=state_for(2), step=2)
        clean.save_checkpoint(run_key, state=state_for(3), step=3)
        after = CheckpointEngine(url, fs=make_target())
        latest = after.latest_checkpoint(run_key)
        assert latest is not None and latest.index == 3, where
        assert after.load_checkpoint(run_key) == state_for(3), where
        assert after.load_checkpoint(run_key, step=2) == state_for(2), where


@pytest.mark.parametrize("mode", ["raise", "torn"])
def test_fault_at_every_io_step_keeps_previous_latest_on_local_disk(tmp_path: Path, mode: Mode) -> None:
    # the wrapper is not the "file" protocol, so the engine commits manifest-last here: payload, manifest and
    # LATEST.json go through the wrapper's pipe_file (auto_mkdir: local pipe_file needs its parent directory)
    _fail_every_step(str(tmp_path / "store"), lambda: LocalFileSystem(auto_mkdir=True), mode)


@pytest.mark.s3
def test_fault_at_every_io_step_keeps_previous_latest_on_s3(s3_server: SeaweedServer, s3_bucket: str) -> None:
    _fail_every_step(f"{s3_bucket}/store", s3_server.filesystem, "raise")
