"""The checkpoint store contract, run against every backend (local, memory, S3)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import fsspec
import pytest
import torch

from grd_blocks.checkpoint import CheckpointEngine, RunCheckpoints
from grd_blocks.errors import CheckpointCorrupt, CheckpointNotFound, InvalidRunKey, StoreUnavailable
from tests.checkpoint.conftest import Backend, RecordingFS, recording_run


def _raw(run: RunCheckpoints) -> tuple[fsspec.AbstractFileSystem, str]:
    fs = run.fs
    return getattr(fs, "_fs", fs), run.path


def _save_three(run: RunCheckpoints) -> None:
    for step in range(3):
        run.save(
            {"weights": torch.full((64,), float(step)), "step": step}, step=step, metrics={"loss": 3 - step}
        )


def _loaded_step(run: RunCheckpoints) -> int | None:
    state = run.load()
    return None if state is None else int(state["step"])


def test_round_trip_keeps_tensors_and_plain_values(backend: Backend) -> None:
    run = backend.run("round-trip")
    state = {
        "w": torch.arange(10, dtype=torch.float64),
        "nested": {"ids": [1, 2, 3], "t": torch.ones(2)},
        "name": "x",
        "pair": (1, 2),
    }
    ref = run.save(state, step=7, metrics={"val_loss": 0.5}, metadata={"note": "hi"})
    assert (ref.unit, ref.index, ref.metrics, ref.metadata) == ("step", 7, {"val_loss": 0.5}, {"note": "hi"})
    loaded = run.load()
    assert loaded is not None
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["nested"]["t"], torch.ones(2))
    assert loaded["nested"]["ids"] == [1, 2, 3] and loaded["name"] == "x" and loaded["pair"] == (1, 2)
    assert run.load(step=7) is not None
    assert backend.engine().list_runs() == ["round-trip"]


def test_state_without_tensors_is_stored_as_json(backend: Backend) -> None:
    run = backend.run()
    run.save({"done": ["a", "b"], "count": 2}, epoch=1)
    fs, path = _raw(run)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{path}/epoch_1", detail=False)) == [
        "MANIFEST.json",
        "state.json",
    ]
    assert run.load() == {"done": ["a", "b"], "count": 2}


def test_empty_run_has_no_latest_and_load_returns_none(backend: Backend) -> None:
    run = backend.run("empty")
    assert run.latest() is None and run.load() is None and run.checkpoints() == []
    assert run.hints(target=10).has_checkpoint is False
    with pytest.raises(CheckpointNotFound):
        run.load(step=3)


def test_latest_costs_constant_requests_regardless_of_checkpoint_count(backend: Backend) -> None:
    counts = []
    for total in (1, 30):
        run, recorder = recording_run(backend, f"count-{total}")
        for step in range(total):
            run.save({"s": step}, step=step)
        recorder.calls.clear()
        ref = run.latest()
        assert ref is not None and ref.index == total - 1
        counts.append(dict(recorder.counts))
    # local disk reads through os (O_NOFOLLOW, safe_io.py), not the filesystem object: no listing either way
    assert counts[0] == counts[1] == ({} if backend.name == "local" else {"cat_file": 2, "info": 1})


def test_resume_hints_point_at_latest(backend: Backend) -> None:
    run = backend.run()
    run.save({"x": 1}, step=4, epoch=1)
    hints = run.hints(target=10)
    assert (
        hints.has_checkpoint,
        hints.unit,
        hints.latest_index,
        hints.step,
        hints.epoch,
        hints.remaining,
    ) == (True, "step", 4, 4, 1, 6)
    assert hints.url is not None and hints.url.endswith("/run/step_4")


def _flip_bit(data: bytes, position: int) -> bytes:
    flipped = bytearray(data)
    flipped[position] ^= 0x04
    return bytes(flipped)


@pytest.mark.parametrize("fraction", [0.0, 0.13, 0.5, 0.77, 0.999])
@pytest.mark.parametrize("target", ["payload", "manifest", "latest"])
def test_one_flipped_bit_anywhere_is_detected(backend: Backend, target: str, fraction: float) -> None:
    run = backend.run()
    _save_three(run)
    fs, path = _raw(run)
    victim = {
        "payload": f"{path}/step_2/state.pt",
        "manifest": f"{path}/step_2/MANIFEST.json",
        "latest": f"{path}/LATEST.json",
    }[target]
    data = fs.cat_file(victim)
    fs.pipe_file(victim, _flip_bit(data, min(len(data) - 1, int(len(data) * fraction))))
    expected = 2 if target == "latest" else 1  # a damaged pointer is bypassed; a damaged step_2 is skipped
    assert _loaded_step(run) == expected


@pytest.mark.parametrize("damage", ["truncate", "missing_payload", "garbage_manifest", "missing_manifest"])
def test_damaged_newest_falls_back_to_previous_with_warning(
    backend: Backend, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    run = backend.run()
    _save_three(run)
    fs, path = _raw(run)
    payload, manifest = f"{path}/step_2/state.pt", f"{path}/step_2/MANIFEST.json"
    if damage == "truncate":
        fs.pipe_file(payload, fs.cat_file(payload)[:-100])
    elif damage == "missing_payload":
        fs.rm_file(payload)
    elif damage == "garbage_manifest":
        fs.pipe_file(manifest, b"\x00garbage{")
    else:
        fs.rm_file(manifest)
    with caplog.at_level(logging.WARNING, logger="grd.checkpoint"):
        latest = run.latest()
        assert latest is not None and latest.index == 1
        assert _loaded_step(run) == 1
    assert "step_2" in caplog.text and "falling back" in caplog.text


def test_garbage_latest_pointer_falls_back_to_scan(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    run = backend.run()
    _save_three(run)
    fs, path = _raw(run)
    fs.pipe_file(f"{path}/LATEST.json", b"not json at all")
    with caplog.at_level(logging.WARNING, logger="grd.checkpoint"):
        latest = run.latest()
    assert latest is not None and latest.index == 2
    assert "LATEST.json" in caplog.text and "not valid JSON" in caplog.text


def test_load_of_damaged_explicit_step_raises(backend: Backend) -> None:
    run = backend.run()
    _save_three(run)
    fs, path = _raw(run)
    fs.pipe_file(f"{path}/step_1/state.pt", _flip_bit(fs.cat_file(f"{path}/step_1/state.pt"), 40))
    assert run.verify("step_1") and not run.verify("step_2")
    with pytest.raises(CheckpointCorrupt, match=r"(blake3|sha256) digest"):
        run.load(step=1)


def test_uncommitted_checkpoint_is_invisible_after_crash(backend: Backend) -> None:
    run = backend.run()
    _save_three(run)
    fs, path = _raw(run)
    fs.makedirs(f"{path}/step_3", exist_ok=True)
    fs.pipe_file(f"{path}/step_3/state.pt", b"half a payload")  # the writer died before its manifest
    if backend.name == "local":  # a complete staging dir that was never renamed into place
        fs.makedirs(f"{path}/.tmp-step_4-abc", exist_ok=True)
        fs.pipe_file(f"{path}/.tmp-step_4-abc/state.json", b"{}")
    assert [ref.index for ref in run.checkpoints()] == [0, 1, 2]
    latest = run.latest()
    assert latest is not None and latest.index == 2
    assert _loaded_step(run) == 2


def test_stale_writer_commits_but_never_moves_latest_backwards(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    run = backend.run()
    run.save({"s": 5}, step=5)
    with caplog.at_level(logging.WARNING, logger="grd.checkpoint"):
        stale = run.save({"s": 3}, step=3)
    assert "StaleWriter" in caplog.text
    latest = run.latest()
    assert latest is not None and latest.index == 5
    assert run.find(step=3) == stale and run.load(step=3) == {"s": 3}
    assert run.load() == {"s": 5}


def test_retry_of_same_step_replaces_it_completely(backend: Backend) -> None:
    run = backend.run()
    run.save({"w": torch.zeros(8)}, step=2)
    run.save({"attempt": 2}, step=2)  # a retry saving the same N, now as JSON
    fs, path = _raw(run)
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{path}/step_2", detail=False))
    assert names[0] == "MANIFEST.json" and len(names) == 2 and names[1].split("~")[0] == "state.json", names
    assert run.load() == {"attempt": 2}
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if "/." in p] == []


def test_re_saving_a_step_again_and_again_keeps_one_version(backend: Backend) -> None:
    run = backend.run()
    run.save({"step": 1}, step=1)
    for attempt in range(4):
        run.save({"w": torch.full((4,), float(attempt)), "attempt": attempt}, step=2)
    fs, path = _raw(run)
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{path}/step_2", detail=False))
    assert names[0] == "MANIFEST.json" and len(names) == 2 and names[1].split("~")[0] == "state.pt", names
    loaded = run.load()
    assert loaded is not None and loaded["attempt"] == 3 and torch.equal(loaded["w"], torch.full((4,), 3.0))
    latest = run.latest()
    assert latest is not None and latest.index == 2 and run.verify(latest) == []


def test_a_re_save_that_dies_before_its_manifest_leaves_the_old_version(backend: Backend) -> None:
    run = backend.run()
    run.save({"attempt": 1}, step=2)

    def dies(_objects: object) -> bytes:
        raise OSError("the writer died here")

    with pytest.raises(OSError, match="died here"):
        run._commit.commit(f"{run.path}/step_2", {"state.json": b'{"attempt": 2}'}, dies)
    assert run.load() == {"attempt": 1}
    latest = run.latest()
    assert latest is not None and latest.index == 2 and run.verify(latest) == []
    run.save({"attempt": 3}, step=2)  # the next re-save still works, and leaves one version
    assert run.load() == {"attempt": 3}


def test_retention_keeps_last_k_and_best_by_monitor(backend: Backend) -> None:
    run = backend.run(keep_last=2, keep_best=1, monitor="val_loss", mode="min")
    losses = [0.9, 0.1, 0.5, 0.7, 0.8]
    for step, loss in enumerate(losses):
        run.save({"s": step}, step=step, metrics={"val_loss": loss})
    assert [ref.index for ref in run.checkpoints()] == [1, 3, 4]  # best (0.1) + the last two


def test_retention_max_mode_keeps_highest(backend: Backend) -> None:
    run = backend.run(keep_last=1, keep_best=1, monitor="acc", mode="max")
    for step, acc in enumerate([0.2, 0.9, 0.5]):
        run.save({"s": step}, step=step, metrics={"acc": acc})
    assert [ref.index for ref in run.checkpoints()] == [1, 2]


def test_retention_never_deletes_latest_when_a_stale_writer_saves(backend: Backend) -> None:
    run = backend.run(keep_last=1)
    run.save({"s": 9}, step=9)
    run.save({"s": 4}, step=4)  # stale: committed, LATEST stays at 9
    run.save({"s": 5}, step=5)  # retention runs: 9 is the latest and the newest, it must survive
    assert _loaded_step_or(run) == 9
    assert 9 in [ref.index for ref in run.checkpoints()]


def _loaded_step_or(run: RunCheckpoints) -> int:
    state = run.load()
    assert state is not None
    return int(state["s"])


def _recorded(calls: list[str], name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real`` itself, noting each call's first argument in ``calls``."""

    def call(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(f"{name} {path}")
        return real(path, *args, **kwargs)

    return call


def test_delete_removes_manifest_first_and_repoints_latest(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, recorder = recording_run(backend)
    run.save({"s": 0}, step=0)
    run.save({"s": 1}, step=1)
    recorder.calls.clear()
    removed: list[str] = []  # local disk deletes through os (never following a link): record those calls
    monkeypatch.setattr(os, "unlink", _recorded(removed, "unlink", os.unlink))
    monkeypatch.setattr(shutil, "rmtree", _recorded(removed, "rmtree", shutil.rmtree))
    run.delete("step_1")
    removals = [f"{name} {arg}" for name, arg in recorder.calls if name in ("rm", "rm_file")] or removed
    assert removals[0].startswith(("rm_file ", "unlink ")) and removals[0].endswith("MANIFEST.json"), removals
    latest = run.latest()
    assert latest is not None and latest.index == 0


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../up", "sp ace", "x" * 129, "ü", "a\x00b"])
def test_run_keys_outside_the_rule_are_rejected(backend: Backend, bad: str) -> None:
    engine = backend.engine()
    with pytest.raises(InvalidRunKey, match="run key"):
        engine.run(bad)
    with pytest.raises(InvalidRunKey):
        engine.run("ok").child(bad)


def test_unreachable_store_raises_store_unavailable_and_keeps_latest(
    backend: Backend, tmp_path: Path
) -> None:
    engine = backend.engine()
    run = engine.run("run")
    run.save({"s": 1}, step=1)
    if backend.name == "local":  # local reads go through os, not the filesystem object: a real fault instead
        aside = tmp_path / "aside"
        os.rename(run.path, aside)
        Path(run.path).write_bytes(b"not a directory")
        with pytest.raises(StoreUnavailable, match=r"read LATEST\.json.*Not a directory"):
            run.latest()
        os.unlink(run.path)
        os.rename(aside, run.path)
        assert _loaded_step_or(run) == 1
        return
    failing = RecordingFS(
        engine.fs,
        fail={
            "pipe_file": OSError(errno.ENOSPC, "No space left on device"),
            "cat_file": ConnectionError("connection refused"),
        },
    )
    broken = RunCheckpoints(run.url, fs=cast(fsspec.AbstractFileSystem, failing), path=run.path)
    if backend.name != "local":  # local commits go through os.rename/fsync (covered in test_local_commit)
        with pytest.raises(StoreUnavailable, match=r"save step_2 failed.*No space left"):
            broken.save({"s": 2}, step=2)
    with pytest.raises(StoreUnavailable, match=r"read LATEST\.json") as info:
        broken.latest()
    assert run.url in str(info.value)
    assert _loaded_step_or(run) == 1


def test_engine_accepts_an_injected_filesystem(backend: Backend) -> None:
    base = backend.engine()
    injected = CheckpointEngine(backend.url, fs=base.fs)
    injected.save_checkpoint("inj", state={"a": 1}, step=0)
    assert base.load_checkpoint("inj") == {"a": 1}


class _ResaveOnFirstPayloadRead:
    """Wraps a filesystem; the first time a payload object of ``step_2`` is read, ``resave()`` runs first:
    a re-save that commits between the reader's manifest read and its payload fetch."""

    def __init__(self, fs: fsspec.AbstractFileSystem, resave: Callable[[], None]) -> None:
        self._fs, self._resave, self.fired = fs, resave, False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if name not in ("cat_file", "info"):
            return attr

        def call(path: str, *args: Any, **kwargs: Any) -> Any:
            if not self.fired and "/step_2/state" in str(path):
                self.fired = True
                self._resave()
            return attr(path, *args, **kwargs)

        return call


def test_a_re_save_between_manifest_and_payload_reads_is_followed_not_fallen_back_from(
    object_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    writer = object_backend.run()
    writer.save({"attempt": 0}, step=1)
    writer.save({"attempt": 1}, step=2)
    engine = object_backend.engine()
    racing = _ResaveOnFirstPayloadRead(engine.fs, lambda: writer.save({"attempt": 2}, step=2))
    reader = RunCheckpoints(f"{object_backend.url}/run", fs=cast(fsspec.AbstractFileSystem, racing),
                            path=f"{engine.path}/run")
    with caplog.at_level(logging.WARNING, logger="grd.checkpoint"):
        assert reader.load() == {"attempt": 2}  # the old payload was gone: the new version, never step 1
    assert racing.fired and "falling back" not in caplog.text and "damaged" not in caplog.text
    racing.fired = False
    writer.save({"attempt": 3}, step=2)
    latest = reader.latest()  # sizes checked against a manifest replaced meanwhile: the new one is checked
    assert racing.fired and latest is not None and latest.index == 2
