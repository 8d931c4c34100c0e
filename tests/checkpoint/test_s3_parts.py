"""Large payloads: serialized into 8 MiB pieces, moved to and from S3 in parallel parts, verified as they
arrive; failures abort the upload and surface as ``StoreUnavailable``."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
import torch

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.checkpoint.digest import CHUNK, digest_later
from grd_blocks.checkpoint.s3parts import PART_BYTES, get_verified, is_s3, put_object
from grd_blocks.checkpoint.serialization import PIECE_BYTES, Pieces, serialize
from grd_blocks.errors import CheckpointCorrupt, StoreUnavailable
from tests.fixtures.seaweed import SeaweedServer

BIG = 5 * PART_BYTES // 2  # 2.5 parts: three, the last one short


def _state(seed: int, size: int = BIG) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randint(0, 255, (size,), dtype=torch.uint8, generator=generator)
    return {"w": weights, "small": [torch.full((3,), float(n)) for n in range(40)], "step": (seed, "x")}


@pytest.mark.parametrize("size", [10, PIECE_BYTES - 500, PIECE_BYTES, BIG])
def test_serialize_writes_exactly_torch_saves_bytes_in_chunk_sized_pieces(size: int) -> None:
    state = _state(1, size)
    files, payload_format = serialize(state)
    expected = io.BytesIO()
    torch.save(state, expected)
    data = files["state.pt"]
    assert payload_format == "torch" and bytes(data) == expected.getvalue() and len(data) == len(bytes(data))
    if isinstance(data, Pieces):
        assert PIECE_BYTES == CHUNK == PART_BYTES
        assert all(len(piece) == PIECE_BYTES for piece in data.pieces[:-1]) and len(data.pieces[-1]) > 0
    whole = expected.getvalue()
    entry = digest_later(data)()
    assert entry.sha256 == hashlib.sha256(whole).hexdigest()
    chunks = [hashlib.sha256(whole[at : at + CHUNK]).hexdigest() for at in range(0, len(whole), CHUNK)]
    assert list(entry.chunks) == (chunks if len(whole) > CHUNK else [])


@pytest.mark.s3
def test_large_object_goes_up_in_parts_and_comes_back_verified(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    fs = s3_server.filesystem()
    assert is_s3(fs)
    files, _ = serialize(_state(2))
    data = files["state.pt"]
    path = f"{s3_bucket.removeprefix('s3://')}/obj/state.pt"
    put_object(fs, path, data)
    assert fs.info(path)["ETag"].strip('"').endswith("-3")  # a three-part multipart upload
    entry = digest_later(data)()
    assert bytes(get_verified(fs, path, entry, "s3://obj")) == bytes(data)


@pytest.mark.s3
@pytest.mark.parametrize("change", [-1, +1, -(BIG - 100)])
def test_an_object_of_another_size_than_its_manifest_is_corrupt(
    s3_server: SeaweedServer, s3_bucket: str, change: int
) -> None:
    fs = s3_server.filesystem()
    data = bytes(serialize(_state(3))[0]["state.pt"])
    entry = digest_later(data)()
    path = f"{s3_bucket.removeprefix('s3://')}/obj/state.pt"
    fs.pipe_file(path, data[:change] if change < 0 else data + b"\0" * change)
    with pytest.raises(CheckpointCorrupt, match=rf"s3://obj is \d+ bytes, its manifest says {len(data)}"):
        get_verified(fs, path, entry, "s3://obj")


@pytest.mark.s3
def test_a_failed_part_aborts_the_upload_and_leaves_no_object(
    s3_server: SeaweedServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mock of a fault, on purpose: the server cannot be made to refuse exactly the second part.
    fs = s3_server.filesystem()
    bucket = s3_bucket.removeprefix("s3://")
    real_call = fs._call_s3
    parts_sent = []

    async def failing_call(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "upload_part":
            parts_sent.append(kwargs["PartNumber"])
            if kwargs["PartNumber"] == 2:
                raise OSError("injected: connection reset while sending part 2")
        return await real_call(method, *args, **kwargs)

    monkeypatch.setattr(fs, "_call_s3", failing_call)
    with pytest.raises(OSError, match="part 2"):
        put_object(fs, f"{bucket}/obj/state.pt", serialize(_state(4))[0]["state.pt"])
    monkeypatch.undo()
    assert 2 in parts_sent and not fs.exists(f"{bucket}/obj/state.pt")
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.s3
def test_large_save_to_a_stopped_server_is_store_unavailable(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    url = f"{s3_bucket}/store"
    engine = CheckpointEngine(url, storage_options=s3_server.storage_options)
    engine.save_checkpoint("big", state=_state(5), step=0)
    s3_server.stop()
    try:
        with pytest.raises(StoreUnavailable, match="reachable"):
            engine.save_checkpoint("big", state=_state(6), step=1)
        with pytest.raises(StoreUnavailable):
            engine.load_checkpoint("big")
    finally:
        s3_server.start()
    loaded = engine.load_checkpoint("big")
    assert loaded is not None and torch.equal(loaded["w"], _state(5)["w"]) and loaded["step"] == (5, "x")


@pytest.mark.s3
def test_large_save_with_wrong_credentials_is_store_unavailable(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    url = f"{s3_bucket}/store"
    good = CheckpointEngine(url, storage_options=s3_server.storage_options)
    good.save_checkpoint("big", state=_state(7), step=0)
    bad = CheckpointEngine(url, storage_options=s3_server.storage_options_with(secret="not-the-secret"))
    with pytest.raises(StoreUnavailable, match="credentials") as saving:
        bad.save_checkpoint("big", state=_state(8), step=1)
    assert isinstance(saving.value.__cause__, PermissionError)
    loaded = good.load_checkpoint("big")
    assert loaded is not None and torch.equal(loaded["w"], _state(7)["w"])
