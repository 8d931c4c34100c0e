"""Every payload byte is hashed once (per chunk) under the digest the manifest records (sha256 or BLAKE3), a
flipped bit is caught with either, and checkpoints written before that change (format 1: whole-file sha256,
optional sha256 chunks) still load and verify."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
from typing import Any

import pytest
import torch

from grd_blocks.checkpoint import CheckpointEngine, RunCheckpoints
from grd_blocks.checkpoint.payload import hashes
from grd_blocks.checkpoint.payload.digest import CHUNK
from grd_blocks.checkpoint.payload.hashes import DigestUnavailable
from grd_blocks.checkpoint.payload.manifest import FORMAT_VERSION, parse_manifest
from grd_blocks.checkpoint.payload.serialization import piece_size_for
from grd_blocks.errors import CheckpointCorrupt, ConfigError

BIG = 5 * CHUNK // 2  # three chunks, the last one short
DIGESTS = ["sha256", pytest.param("blake3", marks=pytest.mark.skipif(
    not hashes.available("blake3"), reason="the blake3 package is not installed"))]


def _state(seed: int, size: int = BIG) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"w": torch.randint(0, 255, (size,), dtype=torch.uint8, generator=generator)}


def _run(root: pathlib.Path) -> RunCheckpoints:
    return CheckpointEngine(str(root / "store")).run("run")


def _algorithm(name: str) -> Any:
    if name == "sha256":
        return hashlib.sha256
    from blake3 import blake3

    return blake3


def _flip(path: pathlib.Path, at: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("digest", DIGESTS)
def test_the_manifest_records_the_digest_and_a_hash_derived_from_its_chunks(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, digest: str
) -> None:
    monkeypatch.setenv(hashes.ENV, digest)
    run = _run(tmp_path)
    run.save(_state(1), step=1)
    step = tmp_path / "store" / "run" / "step_1"
    manifest = json.loads((step / "MANIFEST.json").read_bytes())
    entry, data, new = manifest["files"]["state.pt"], (step / "state.pt").read_bytes(), _algorithm(digest)
    assert manifest["format_version"] == FORMAT_VERSION == 2
    assert entry["digest"] == digest and "sha256" not in entry
    size = entry["chunk_size"]
    assert size == piece_size_for(len(data)) and len(entry["chunks"]) == -(-len(data) // size) > 1
    assert entry["chunks"] == [new(data[at : at + size]).hexdigest() for at in range(0, len(data), size)]
    assert entry["hash"] == new(b"".join(bytes.fromhex(chunk) for chunk in entry["chunks"])).hexdigest()
    assert run.verify("step_1") == []


@pytest.mark.parametrize("digest", DIGESTS)
@pytest.mark.parametrize("at", [0.0, 0.5, 0.999])
def test_a_flipped_bit_is_caught_with_each_digest(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, digest: str, at: float
) -> None:
    monkeypatch.setenv(hashes.ENV, digest)
    run = _run(tmp_path)
    run.save(_state(0), step=0)
    run.save(_state(1), step=1)
    _flip(tmp_path / "store" / "run" / "step_1" / "state.pt", at)
    problems = run.verify("step_1")
    assert len(problems) == 1 and f"{digest} digest" in problems[0] and "step_1/state.pt" in problems[0]
    with pytest.raises(CheckpointCorrupt, match=f"{digest} digest"):
        run.load(step=1)
    loaded = run.load()  # the latest is damaged: the one before it is used
    assert loaded is not None and torch.equal(loaded["w"], _state(0)["w"])


@pytest.mark.parametrize("digest", DIGESTS)
def test_a_small_json_payload_is_one_chunk_and_caught_when_flipped(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, digest: str
) -> None:
    monkeypatch.setenv(hashes.ENV, digest)
    run = _run(tmp_path)
    run.save({"epoch": 3, "rows": [1, 2, 3]}, step=1)
    step = tmp_path / "store" / "run" / "step_1"
    entry = json.loads((step / "MANIFEST.json").read_bytes())["files"]["state.json"]
    assert entry["digest"] == digest and len(entry["chunks"]) == 1
    assert run.load(step=1) == {"epoch": 3, "rows": [1, 2, 3]}
    (step / "state.json").write_bytes((step / "state.json").read_bytes().replace(b"3", b"4"))
    with pytest.raises(CheckpointCorrupt, match=f"{digest} digest"):
        run.load(step=1)


def _checksummed(obj: dict[str, Any]) -> bytes:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps({**obj, "checksum": hashlib.sha256(canonical).hexdigest()}, indent=1,
                      sort_keys=True).encode()


def _write_format_1(root: pathlib.Path, index: int, state: dict[str, Any], *, chunked: bool) -> None:
    """A checkpoint exactly as grd wrote it before format 2: whole-file sha256, sha256 chunks when asked."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    entry: dict[str, Any] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if chunked:
        entry["chunk_size"] = CHUNK
        entry["chunks"] = [hashlib.sha256(data[at : at + CHUNK]).hexdigest()
                           for at in range(0, len(data), CHUNK)]
    step = root / "store" / "run" / f"step_{index}"
    step.mkdir(parents=True)
    (step / "state.pt").write_bytes(data)
    manifest = {
        "unit": "step", "index": index, "files": {"state.pt": entry}, "payload_format": "torch",
        "handlers": {"w": "torch.Tensor"}, "created_at": "2026-11-01T00:00:00.000000+00:00",
        "writer": "h:1:1", "metrics": {}, "metadata": {}, "step": index, "epoch": None, "format_version": 1,
    }
    (step / "MANIFEST.json").write_bytes(_checksummed(manifest))
    pointer = {"unit": "step", "index": index, "dirname": f"step_{index}",
               "created_at": "2026-11-01T00:00:00.000000+00:00", "writer": "h:1:1", "format_version": 1}
    (root / "store" / "run" / "LATEST.json").write_bytes(_checksummed(pointer))


@pytest.mark.parametrize("chunked", [True, False], ids=["sha256-chunks", "whole-sha256-only"])
def test_a_format_1_checkpoint_still_loads_verifies_and_catches_a_flipped_bit(
    tmp_path: pathlib.Path, chunked: bool
) -> None:
    _write_format_1(tmp_path, 1, _state(1), chunked=chunked)
    run = _run(tmp_path)
    latest = run.latest()
    assert latest is not None and latest.index == 1
    assert run.verify("step_1") == []
    loaded = run.load()
    assert loaded is not None and torch.equal(loaded["w"], _state(1)["w"])
    run.save(_state(2), step=2)  # a new save beside it is format 2; the old one stays readable
    assert parse_manifest((tmp_path / "store/run/step_1/MANIFEST.json").read_bytes(), "M").files[
        "state.pt"].digest is None
    _flip(tmp_path / "store" / "run" / "step_1" / "state.pt", 0.7)
    problems = run.verify("step_1")
    assert len(problems) == 1 and "sha256 digest" in problems[0]
    with pytest.raises(CheckpointCorrupt, match="sha256 digest"):
        run.load(step=1)


def test_a_hash_that_disagrees_with_its_chunks_is_corrupt(tmp_path: pathlib.Path) -> None:
    run = _run(tmp_path)
    run.save(_state(1), step=1)
    path = tmp_path / "store" / "run" / "step_1" / "MANIFEST.json"
    manifest = json.loads(path.read_bytes())
    manifest.pop("checksum")
    manifest["files"]["state.pt"]["hash"] = "0" * 64  # re-checksummed: only the hash is wrong
    path.write_bytes(_checksummed(manifest))
    with pytest.raises(CheckpointCorrupt, match=r"not the \w+ of its chunk digests"):
        run.load(step=1)


def test_an_unknown_digest_name_in_a_manifest_is_corrupt(tmp_path: pathlib.Path) -> None:
    run = _run(tmp_path)
    run.save(_state(1, 1000), step=1)
    path = tmp_path / "store" / "run" / "step_1" / "MANIFEST.json"
    manifest = json.loads(path.read_bytes())
    manifest.pop("checksum")
    manifest["files"]["state.pt"]["digest"] = "md5"
    path.write_bytes(_checksummed(manifest))
    problems = run.verify("step_1")
    assert len(problems) == 1 and "names digest 'md5', not one of sha256, blake3" in problems[0]


def test_a_blake3_checkpoint_without_the_package_names_the_package_and_the_fix(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(hashes.ENV, "sha256")
    run = _run(tmp_path)
    run.save(_state(0, 1000), step=0)
    if hashes.available("blake3"):
        monkeypatch.setenv(hashes.ENV, "blake3")
        run.save(_state(1, 1000), step=1)
    else:  # written by hand as a grd with blake3 would have: the reader never hashes it here
        pytest.skip("the blake3 package is not installed: no blake3 checkpoint to write")
    monkeypatch.setitem(hashes._FUNCTIONS, "blake3", None)  # as if the package were not installed
    with pytest.raises(DigestUnavailable, match=r"pip install blake3"):
        run.load()  # not a damaged checkpoint: no fallback to step 0
    monkeypatch.setenv(hashes.ENV, "blake3")
    with pytest.raises(DigestUnavailable, match=r"pip install blake3"):
        run.save(_state(2, 1000), step=2)


def test_an_unknown_digest_asked_for_by_the_environment_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(hashes.ENV, "md5")
    with pytest.raises(ConfigError, match="GRD_CHECKPOINT_DIGEST='md5'"):
        _run(tmp_path).save(_state(0, 1000), step=0)
    assert not (tmp_path / "store" / "run" / "step_0").exists()
