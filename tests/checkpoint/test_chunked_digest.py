"""Large payloads carry digests that cover every byte, per chunk (on every backend, streamed or not); local
loads map the verified inode."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.checkpoint.payload import digest, hashes
from grd_blocks.checkpoint.payload.digest import CHUNK
from grd_blocks.checkpoint.payload.manifest import FileEntry, Manifest, now_iso, parse_manifest
from grd_blocks.checkpoint.payload.serialization import piece_size_for
from grd_blocks.errors import CheckpointCorrupt
from tests.checkpoint.conftest import Backend

BIG = 5 * CHUNK // 2  # 2.5 chunks: three pieces, the last one short


def _big_state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"w": torch.randint(0, 255, (BIG,), dtype=torch.uint8, generator=generator)}


def test_large_payload_manifest_lists_digests_that_match_the_file(backend: Backend) -> None:
    run = backend.run()
    run.save(_big_state(1), step=1)
    manifest = json.loads(run.fs.cat_file(f"{run.path}/step_1/MANIFEST.json"))
    data = run.fs.cat_file(f"{run.path}/step_1/state.pt")
    entry = manifest["files"]["state.pt"]
    size, digest = entry["chunk_size"], hashes.function(entry["digest"])
    assert entry["chunks"] == [digest(data[start : start + size]) for start in range(0, len(data), size)]
    assert len(entry["chunks"]) == -(-len(data) // size) > 1
    assert size == (piece_size_for(BIG) if backend.name == "local" else CHUNK)  # S3: one part per chunk
    assert entry["hash"] == hashes.combine(entry["digest"], entry["chunks"])


@pytest.mark.parametrize("where", [0.1, 0.99])
def test_bit_flip_in_any_chunk_is_detected_and_load_falls_back(backend: Backend, where: float) -> None:
    run = backend.run()
    run.save(_big_state(0), step=0)
    run.save(_big_state(1), step=1)
    path = f"{run.path}/step_1/state.pt"
    data = bytearray(run.fs.cat_file(path))
    data[int(len(data) * where)] ^= 0x10
    run.fs.pipe_file(path, bytes(data))
    problems = run.verify("step_1")
    assert len(problems) == 1 and " digest " in problems[0] and "step_1/state.pt" in problems[0]
    loaded = run.load()
    assert loaded is not None and torch.equal(loaded["w"], _big_state(0)["w"])
    with pytest.raises(CheckpointCorrupt, match=" digest "):
        run.load(step=1)


def test_malformed_chunk_list_makes_the_manifest_corrupt() -> None:
    def manifest(entry: FileEntry) -> bytes:
        return Manifest(
            unit="step",
            index=1,
            files={"state.pt": entry},
            payload_format="torch",
            handlers={},
            created_at=now_iso(),
            writer="t",
        ).to_bytes()

    good = FileEntry(size=10, whole="a" * 64, chunk_size=4, chunks=("b" * 64,) * 3)
    assert parse_manifest(manifest(good), "M").files["state.pt"] == good
    for bad in (
        FileEntry(size=10, whole="a" * 64, chunk_size=4, chunks=("b" * 64,) * 2),  # too few pieces
        FileEntry(size=10, whole="a" * 64, chunk_size=0, chunks=("b" * 64,) * 3),
        FileEntry(size=10, whole="a" * 64, chunk_size=4, chunks=("b" * 63,) * 3),
    ):
        with pytest.raises(CheckpointCorrupt, match="chunk"):
            parse_manifest(manifest(bad), "M")


def test_loaded_tensors_keep_their_values_after_the_checkpoint_is_replaced_and_deleted(
    tmp_path: pathlib.Path,
) -> None:
    run = CheckpointEngine(str(tmp_path / "store")).run("run")
    run.save(_big_state(1), step=1)
    loaded = run.load()
    assert loaded is not None
    run.save(_big_state(2), step=1)  # a retry of the same step: a new directory is renamed in
    run.delete("step_1")
    assert not (tmp_path / "store" / "run" / "step_1").exists()
    assert torch.equal(loaded["w"], _big_state(1)["w"])
    loaded["w"][0] += 1  # writable, and private to this process
    assert run.latest() is None


@pytest.mark.parametrize("mapped", [True, False], ids=["hashed-from-a-mapping", "read-chunk-by-chunk"])
def test_local_verification_catches_a_flipped_bit_mapped_or_read(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, mapped: bool
) -> None:
    if not mapped:  # as on a filesystem that cannot be memory-mapped: each chunk is read with pread
        monkeypatch.setattr(digest, "_mapping", lambda fd, size: None)
    run = CheckpointEngine(str(tmp_path / "store")).run("run")
    run.save(_big_state(1), step=1)
    loaded = run.load(step=1)
    assert loaded is not None and torch.equal(loaded["w"], _big_state(1)["w"])
    del loaded  # its tensors map the file rewritten below
    path = tmp_path / "store" / "run" / "step_1" / "state.pt"
    data = bytearray(path.read_bytes())
    chunk = piece_size_for(BIG)
    data[chunk + 5] ^= 0x10  # the second chunk
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupt, match=rf"bytes {chunk}\.\.{2 * chunk} have"):
        run.load(step=1)
