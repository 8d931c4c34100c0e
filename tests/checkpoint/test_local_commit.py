"""Local disk commit: staging inside the run dir, atomic rename, real ENOSPC on a full tmpfs."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import torch

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.errors import StoreUnavailable


@pytest.fixture
def tiny_disk(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A real 1 MiB tmpfs (needs permission to mount; skipped where there is none)."""
    mount_point = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_raises_store_unavailable_and_keeps_previous_latest(tiny_disk: pathlib.Path) -> None:
    engine = CheckpointEngine(str(tiny_disk / "store"))
    run = engine.run("run")
    run.save({"w": torch.zeros(1000)}, step=1)
    with pytest.raises(StoreUnavailable, match=r"save step_2 failed.*No space left") as info:
        run.save({"w": torch.zeros(2_000_000)}, step=2)  # 8 MB on a 1 MiB disk
    assert str(tiny_disk) in str(info.value)
    assert str(info.value).endswith("Free disk space (or raise the quota)")
    latest = run.latest()
    assert latest is not None and latest.index == 1
    assert sorted(os.listdir(tiny_disk / "store" / "run")) == ["LATEST.json", "step_1"]  # no staging left


def test_async_full_disk_error_surfaces_on_flush(tiny_disk: pathlib.Path) -> None:
    run = CheckpointEngine(str(tiny_disk / "store")).run("run")
    run.save_async({"w": torch.zeros(2_000_000)}, step=1)
    with pytest.raises(StoreUnavailable, match="No space left"):
        run.flush()
    assert run.latest() is None


def test_retry_replacement_leaves_no_staging_or_old_dirs(tmp_path: pathlib.Path) -> None:
    run = CheckpointEngine(str(tmp_path / "store")).run("run")
    for attempt in range(3):
        run.save({"attempt": attempt, "t": torch.ones(3)}, step=4)
    assert sorted(os.listdir(tmp_path / "store" / "run")) == ["LATEST.json", "step_4"]
    loaded = run.load()
    assert loaded is not None and loaded["attempt"] == 2


def test_relative_url_is_resolved_against_cwd(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = CheckpointEngine("./checkpoints")
    engine.save_checkpoint("r", state={"a": 1}, step=0)
    assert (tmp_path / "checkpoints" / "r" / "step_0" / "MANIFEST.json").is_file()
    assert engine.run_url("r") == "./checkpoints/r"


def test_writers_saving_the_same_step_at_once_all_commit_and_the_last_version_stays(
    tmp_path: pathlib.Path,
) -> None:
    """Racing re-saves of one step used to fail now and then (1 of 3,600) with a store error telling the user
    to check free disk space: one writer moved the old version aside while another was doing the same. Four
    threads save step 5 forty times each: every save commits, and the checkpoint left verifies."""
    import threading

    run = CheckpointEngine(str(tmp_path / "store")).run("run")
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        handle = CheckpointEngine(str(tmp_path / "store")).run("run")
        for attempt in range(40):
            try:
                handle.save({"writer": number, "attempt": attempt}, step=5)
            except BaseException as exc:  # counted, then asserted on: a thread cannot fail the test itself
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    state = run.load()
    assert state is not None and state["attempt"] in range(40) and run.verify("step_5") == []
    assert sorted(os.listdir(tmp_path / "store" / "run")) == ["LATEST.json", "step_5"]  # nothing left aside


@pytest.mark.parametrize(("exc", "fix"), [
    (OSError(errno.ENOSPC, "No space left on device"), "Free disk space (or raise the quota)"),
    (OSError(errno.EROFS, "Read-only file system"), "Check that this user may write there"),
    (PermissionError(errno.EACCES, "Permission denied"), "Check that this user may write there"),
    (RuntimeError("An error occurred (InvalidAccessKeyId) when calling PutObject"), "Check the credentials"),
    (ConnectionRefusedError(111, "Connection refused"), "Check that the server/endpoint is reachable"),
])
def test_a_store_failure_names_what_to_check_for_its_cause(exc: BaseException, fix: str) -> None:
    from grd_blocks.checkpoint.storage.fsio import unavailable

    message = str(unavailable("s3://b/ckpts", "save step_1", exc))
    advice = message.split("previous latest are intact. ", 1)[1]
    assert advice.startswith(fix), message
    assert "free disk space" not in advice.lower() or fix.startswith("Free disk space"), message


def test_a_local_re_save_never_leaves_the_step_absent_for_a_reader(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rename the commit makes is followed by a look from outside: step_2's manifest is there after each
    one (the new version and the old are exchanged in one step, never moved aside and then in)."""
    from grd_blocks.checkpoint.storage import commit

    run = CheckpointEngine(str(tmp_path / "store")).run("run")
    run.save({"v": 1}, step=2)
    manifest = tmp_path / "store" / "run" / "step_2" / "MANIFEST.json"
    present: list[bool] = []
    real_rename, real_exchange = os.rename, commit._exchange

    def rename(src: str, dst: str) -> None:
        try:
            real_rename(src, dst)
        finally:
            present.append(manifest.exists())

    def exchange(staging: str, ckpt_dir: str) -> bool:
        try:
            return real_exchange(staging, ckpt_dir)
        finally:
            present.append(manifest.exists())

    monkeypatch.setattr(commit.os, "rename", rename)
    monkeypatch.setattr(commit, "_exchange", exchange)
    run.save({"v": 2}, step=2)
    assert present and all(present), present
    assert run.load() == {"v": 2}
