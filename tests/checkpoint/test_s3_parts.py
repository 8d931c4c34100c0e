"""Large payloads: serialized into 8 MiB pieces, moved to and from S3 in parallel parts, verified as they
arrive; failures abort the upload and surface as ``StoreUnavailable``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import s3fs
import torch
from torch.utils.serialization import config as torch_serialization_config

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.checkpoint.payload import serialization
from grd_blocks.checkpoint.payload.digest import CHUNK, InOrderHasher, digest_later
from grd_blocks.checkpoint.payload.hashes import save_algorithm
from grd_blocks.checkpoint.payload.manifest import FileEntry
from grd_blocks.checkpoint.payload.serialization import PIECE_BYTES, Pieces, serialize
from grd_blocks.checkpoint.storage.commit import ManifestLastCommit
from grd_blocks.checkpoint.storage.s3client import TRANSFER_THREADS, client_for
from grd_blocks.checkpoint.storage.s3parts import PART_BYTES, get_verified, is_s3, put_object
from grd_blocks.errors import CheckpointCorrupt, StoreUnavailable
from tests.fixtures.seaweed import SeaweedServer

BIG = 5 * PART_BYTES // 2  # 2.5 parts: three, the last one short


def _state(seed: int, size: int = BIG) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randint(0, 255, (size,), dtype=torch.uint8, generator=generator)
    return {"w": weights, "small": [torch.full((3,), float(n)) for n in range(40)], "step": (seed, "x")}


@pytest.mark.parametrize("size", [10, PIECE_BYTES - 500, PIECE_BYTES, BIG])
def test_serialize_writes_exactly_torch_saves_bytes_in_chunk_sized_pieces(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state(1, size)
    files, payload_format = serialize(state)
    monkeypatch.setattr(torch_serialization_config.save, "compute_crc32", False)  # grd writes no zip CRCs
    expected = io.BytesIO()
    torch.save(state, expected)
    data = files["state.pt"]
    assert payload_format == "torch" and bytes(data) == expected.getvalue() and len(data) == len(bytes(data))
    if isinstance(data, Pieces):
        assert PIECE_BYTES == CHUNK == PART_BYTES
        assert all(len(piece) == PIECE_BYTES for piece in data.pieces[:-1]) and len(data.pieces[-1]) > 0
    whole = expected.getvalue()
    entry = digest_later(data, "sha256")()
    chunks = [hashlib.sha256(whole[at : at + CHUNK]).hexdigest() for at in range(0, len(whole), CHUNK)]
    assert entry.digest == "sha256" and list(entry.chunks) == chunks
    assert entry.whole == hashlib.sha256(b"".join(bytes.fromhex(chunk) for chunk in chunks)).hexdigest()


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
    entry = digest_later(data, save_algorithm())()
    assert bytes(get_verified(fs, path, entry, "s3://obj")) == bytes(data)


@pytest.mark.s3
@pytest.mark.parametrize("change", [-1, +1, -(BIG - 100)])
def test_an_object_of_another_size_than_its_manifest_is_corrupt(
    s3_server: SeaweedServer, s3_bucket: str, change: int
) -> None:
    fs = s3_server.filesystem()
    data = bytes(serialize(_state(3))[0]["state.pt"])
    entry = digest_later(data, save_algorithm())()
    path = f"{s3_bucket.removeprefix('s3://')}/obj/state.pt"
    fs.pipe_file(path, data[:change] if change < 0 else data + b"\0" * change)
    with pytest.raises(CheckpointCorrupt, match=rf"s3://obj is \d+ bytes, its manifest says {len(data)}"):
        get_verified(fs, path, entry, "s3://obj")


@contextlib.contextmanager
def _before_sending(fs: Any, operation: str, handler: Callable[..., None]) -> Iterator[None]:
    """Run ``handler(request=...)`` before each ``operation`` request of ``fs``'s transfer client leaves."""
    events = client_for(fs).client.meta.events
    name = f"before-send.s3.{operation}"
    unique_id = f"grd-test-{id(handler)}"
    events.register(name, handler, unique_id=unique_id)
    try:
        yield
    finally:
        events.unregister(name, unique_id=unique_id)


def _part_number(request: Any) -> int:
    return int(parse_qs(urlsplit(request.url).query)["partNumber"][0])


@pytest.mark.s3
def test_a_failed_part_aborts_the_upload_and_leaves_no_object(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    # A fault injected on purpose: the server cannot be made to refuse exactly the second part.
    fs = s3_server.filesystem()
    bucket = s3_bucket.removeprefix("s3://")
    parts_sent: list[int] = []

    def reset_part_2(request: Any, **_: Any) -> None:
        parts_sent.append(_part_number(request))
        if parts_sent[-1] == 2:
            raise OSError("injected: connection reset while sending part 2")

    with _before_sending(fs, "UploadPart", reset_part_2), pytest.raises(OSError, match="part 2"):
        put_object(fs, f"{bucket}/obj/state.pt", serialize(_state(4))[0]["state.pt"])
    assert 2 in parts_sent and not fs.exists(f"{bucket}/obj/state.pt")
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.s3
@pytest.mark.parametrize(
    ("operation", "part"),
    [
        ("CreateMultipartUpload", None),
        ("UploadPart", 1),
        ("UploadPart", 3),
        ("CompleteMultipartUpload", None),
    ],
)
def test_a_save_failing_at_any_request_of_its_multipart_upload_commits_nothing_and_the_next_one_works(
    s3_server: SeaweedServer, s3_bucket: str, operation: str, part: int | None
) -> None:
    # Faults injected on purpose, one request of the upload at a time: the server cannot be made to refuse
    # exactly one of them.
    engine = _engine_saved_at_step_0(s3_server, s3_bucket, 30)
    failed: list[str] = []

    def fail(request: Any, **_: Any) -> None:
        if part is None or _part_number(request) == part:
            failed.append(operation)
            raise OSError(f"injected: connection reset during {operation}")

    with _before_sending(s3_server.filesystem(), operation, fail), pytest.raises(StoreUnavailable) as saving:
        engine.save_checkpoint("big", state=_state(31), step=1)
    assert failed and operation in str(saving.value)
    bucket = s3_bucket.removeprefix("s3://")
    assert not s3_server.filesystem().exists(f"{bucket}/store/big/step_1/state.pt")
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert engine.latest_checkpoint("big").index == 0  # type: ignore[union-attr]
    _assert_latest_loads(engine, 30)
    engine.save_checkpoint("big", state=_state(32), step=1)
    _assert_latest_loads(engine, 32)


@pytest.mark.s3
def test_a_server_killed_mid_upload_leaves_no_object_and_the_previous_latest_loads(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    engine = _engine_saved_at_step_0(s3_server, s3_bucket, 10)

    def kill_at_part_2(request: Any, **_: Any) -> None:
        if _part_number(request) == 2:
            s3_server.stop()  # a real outage: SIGKILL, while the other parts are in flight

    try:
        with (
            _before_sending(s3_server.filesystem(), "UploadPart", kill_at_part_2),
            pytest.raises(StoreUnavailable, match="reachable"),
        ):
            engine.save_checkpoint("big", state=_state(11), step=1)
    finally:
        s3_server.start()
    assert _serializing() == []  # the failed save's serializer was stopped, not left running
    fs = s3_server.filesystem()
    assert not fs.exists(f"{s3_bucket.removeprefix('s3://')}/store/big/step_1/state.pt")
    assert engine.latest_checkpoint("big").index == 0  # type: ignore[union-attr]
    _assert_latest_loads(engine, 10)


def _engine_saved_at_step_0(s3_server: SeaweedServer, s3_bucket: str, seed: int) -> CheckpointEngine:
    """An engine on ``{s3_bucket}/store`` whose run "big" has ``_state(seed)`` committed as step 0."""
    engine = CheckpointEngine(f"{s3_bucket}/store", storage_options=s3_server.storage_options)
    engine.save_checkpoint("big", state=_state(seed), step=0)
    return engine


def _assert_latest_loads(engine: CheckpointEngine, seed: int) -> None:
    """The run "big"'s latest checkpoint loads and holds ``_state(seed)``'s weights."""
    loaded = engine.load_checkpoint("big")
    assert loaded is not None and torch.equal(loaded["w"], _state(seed)["w"])


def _serializing() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "grd-serialize"]


@pytest.mark.s3
def test_a_large_save_sends_its_first_parts_while_the_rest_is_still_being_serialized(
    s3_server: SeaweedServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch.save is held after its second piece until a part has reached the server: a save that serialized
    # everything before sending would wait here for a minute and fail.
    part_sent = threading.Event()
    real_write = serialization._PieceWriter.write
    held: list[bool] = []

    def write_then_wait_for_a_part(self: Any, data: Any) -> int:
        written = real_write(self, data)
        if len(memoryview(data).cast("B")) >= 2 * PIECE_BYTES and not held:
            held.append(part_sent.wait(timeout=60))
        return written

    def sent(request: Any, **_: Any) -> None:
        part_sent.set()

    monkeypatch.setattr(serialization._PieceWriter, "write", write_then_wait_for_a_part)
    engine = CheckpointEngine(f"{s3_bucket}/store", storage_options=s3_server.storage_options)
    with _before_sending(s3_server.filesystem(), "UploadPart", sent):
        engine.save_checkpoint("big", state=_state(20), step=0)
    assert held == [True]
    _assert_latest_loads(engine, 20)


@pytest.mark.s3
def test_a_save_whose_serializing_fails_raises_that_failure_and_commits_nothing(
    s3_server: SeaweedServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mock of a fault: torch.save fails only when memory runs out, which a test cannot cause safely.
    engine = _engine_saved_at_step_0(s3_server, s3_bucket, 21)
    real_write = serialization._PieceWriter.write
    emitted: list[int] = []

    def fail_in_the_third_piece(self: Any, data: Any) -> int:
        emit = self._emit

        def counting(piece: bytes) -> None:
            emitted.append(len(piece))
            if len(emitted) == 3:
                raise MemoryError("injected: out of memory while serializing")
            emit(piece)

        self._emit = counting
        try:
            return real_write(self, data)
        finally:
            self._emit = emit

    monkeypatch.setattr(serialization._PieceWriter, "write", fail_in_the_third_piece)
    with pytest.raises(MemoryError, match="injected"):  # two parts may be up already
        engine.save_checkpoint("big", state=_state(22, 4 * PART_BYTES), step=1)
    monkeypatch.undo()
    assert _serializing() == []
    bucket = s3_bucket.removeprefix("s3://")
    assert not s3_server.filesystem().exists(f"{bucket}/store/big/step_1/state.pt")
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    _assert_latest_loads(engine, 21)
    engine.save_checkpoint("big", state=_state(22), step=1)  # the next save works
    _assert_latest_loads(engine, 22)


def _headers(request: Any) -> dict[str, str]:
    """A request's headers, names in lower case, values as text."""
    return {
        name.lower(): value.decode() if isinstance(value, bytes) else str(value)
        for name, value in request.headers.items()
    }


def _damaging_part_2(attempts: int) -> Callable[..., None]:
    """A ``before-send`` handler that flips one bit of part 2's body on its first ``attempts`` sends, after
    its headers (and checksum) were made: damage on the way to the server."""
    damaged: list[int] = []

    def damage(request: Any, **_: Any) -> None:
        if _part_number(request) == 2 and len(damaged) < attempts:
            body = bytearray(request.body)
            body[12345] ^= 0x01
            request.body = bytes(body)
            damaged.append(2)

    return damage


@pytest.mark.s3
def test_each_part_carries_a_crc32_the_server_checks_so_a_part_damaged_on_the_way_is_sent_again(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    engine = CheckpointEngine(f"{s3_bucket}/store", storage_options=s3_server.storage_options)
    headers: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        assert isinstance(request.body, bytes | bytearray)  # the part itself, sent with one sendall
        headers.append(_headers(request))

    fs = s3_server.filesystem()
    with _before_sending(fs, "UploadPart", record), _before_sending(fs, "UploadPart", _damaging_part_2(1)):
        engine.save_checkpoint("big", state=_state(13), step=1)
    assert len(headers) == 4  # three parts, part 2 twice: the server refused the damaged copy
    assert all("UNSIGNED-PAYLOAD" in sent["x-amz-content-sha256"] for sent in headers)
    assert all(sent["x-amz-sdk-checksum-algorithm"] == "CRC32" for sent in headers)
    _assert_latest_loads(engine, 13)


@pytest.mark.s3
def test_a_part_damaged_on_every_send_fails_the_save_and_the_previous_latest_loads(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    engine = _engine_saved_at_step_0(s3_server, s3_bucket, 14)
    fs = s3_server.filesystem()
    with _before_sending(fs, "UploadPart", _damaging_part_2(10**6)), pytest.raises(StoreUnavailable):
        engine.save_checkpoint("big", state=_state(15), step=1)
    assert not fs.exists(f"{s3_bucket.removeprefix('s3://')}/store/big/step_1/state.pt")
    _assert_latest_loads(engine, 14)


@pytest.mark.s3
def test_with_part_checksums_turned_off_a_part_damaged_on_the_way_is_caught_at_load_not_loaded(
    s3_server: SeaweedServer, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = s3_server.storage_options
    options["config_kwargs"] = {"request_checksum_calculation": "when_required"}
    engine = CheckpointEngine(f"{s3_bucket}/store", storage_options=options)
    engine.save_checkpoint("big", state=_state(16), step=0)
    headers: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        headers.append(_headers(request))

    fs = s3fs.S3FileSystem(**options)
    with _before_sending(fs, "UploadPart", record), _before_sending(fs, "UploadPart", _damaging_part_2(1)):
        engine.save_checkpoint("big", state=_state(17), step=1)  # nothing on the way up checks the bytes
    assert len(headers) == 3
    assert not [name for sent in headers for name in sent if name.startswith("x-amz-checksum")]
    damaged = r"step_1/state.pt: bytes \d+\.\.\d+ have .*[0-9a-f]{64}, its manifest"
    with pytest.raises(CheckpointCorrupt, match=damaged):
        engine.load_checkpoint("big", step=1)
    loaded = engine.load_checkpoint("big")  # the damaged latest is skipped: the one before loads
    assert loaded is not None and torch.equal(loaded["w"], _state(16)["w"])
    assert "step_1" in caplog.text


@pytest.mark.s3
def test_an_entry_without_chunk_digests_is_verified_whole_on_the_parallel_path(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    fs = s3_server.filesystem()
    path = f"{s3_bucket.removeprefix('s3://')}/obj/state.pt"
    data = bytes(serialize(_state(16))[0]["state.pt"])
    put_object(fs, path, data)
    whole_only = FileEntry(size=len(data), whole=hashlib.sha256(data).hexdigest())  # a format-1 manifest
    assert bytes(get_verified(fs, path, whole_only, "s3://obj")) == data
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    put_object(fs, path, bytes(flipped))
    with pytest.raises(CheckpointCorrupt, match="s3://obj has sha256 digest"):
        get_verified(fs, path, whole_only, "s3://obj")
    with pytest.raises(CheckpointCorrupt, match=rf"s3://obj: bytes {PART_BYTES}\.\.{2 * PART_BYTES} have"):
        get_verified(fs, path, digest_later(data, save_algorithm())(), "s3://obj")


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


@pytest.mark.s3
def test_a_checkpoint_whose_manifest_lists_chunk_digests_still_loads_and_verifies_on_s3(
    s3_server: SeaweedServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = CheckpointEngine(f"{s3_bucket}/store", storage_options=s3_server.storage_options).run("big")
    # serialized whole first (as grd wrote S3 payloads before streaming them), then streamed: both list the
    # same chunk digests of each part
    monkeypatch.setattr(ManifestLastCommit, "takes_streams", False)
    run.save(_state(18), step=0)
    monkeypatch.undo()
    run.save(_state(19), step=1)
    chunked = json.loads(run.fs.cat_file(f"{run.path}/step_0/MANIFEST.json"))["files"]["state.pt"]
    streamed = json.loads(run.fs.cat_file(f"{run.path}/step_1/MANIFEST.json"))["files"]["state.pt"]
    assert len(chunked["chunks"]) == 3 and len(streamed["chunks"]) == 3
    assert run.verify("step_0") == [] and run.verify("step_1") == []
    loaded = run.load(step=0)
    assert loaded is not None and torch.equal(loaded["w"], _state(18)["w"])
    path = f"{run.path}/step_0/state.pt"
    data = bytearray(run.fs.cat_file(path))
    data[-5] ^= 0x01
    run.fs.pipe_file(path, bytes(data))
    with pytest.raises(CheckpointCorrupt, match=rf"bytes {2 * PART_BYTES}\.\.{len(data)} have \w+ digest"):
        run.load(step=0)


def test_in_order_hashing_gives_the_whole_sha256_whatever_order_the_ranges_arrive_in() -> None:
    data = bytes(range(256)) * (3 * PART_BYTES // 256 + 7)
    ranges = [(start, min(start + PART_BYTES, len(data))) for start in range(0, len(data), PART_BYTES)]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        hasher = InOrderHasher(memoryview(data), ranges)
        for number in order:
            hasher.arrived(number)
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    partial = InOrderHasher(memoryview(data), ranges)
    for number in (0, 2, 3):
        partial.arrived(number)
    assert partial.hexdigest() is None  # range 1 never came: no digest of the bytes before it is trusted


@pytest.mark.s3
def test_large_and_small_saves_fail_alike_with_wrong_credentials(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    options = s3_server.storage_options_with(secret="not-the-secret")
    bad = CheckpointEngine(f"{s3_bucket}/store", storage_options=options)
    errors = []
    for state in ({"small": 1}, _state(17)):  # s3fs's own request / the parallel upload's
        with pytest.raises(StoreUnavailable) as saving:
            bad.save_checkpoint("run", state=state, step=0)
        errors.append(saving.value.__cause__)
    assert [type(error) for error in errors] == [PermissionError, PermissionError]
    assert str(errors[0]) == str(errors[1])


def test_one_client_per_configuration_and_another_for_other_credentials(
    s3_server: SeaweedServer,
) -> None:
    first, again = s3_server.filesystem(), s3_server.filesystem()
    other = s3fs.S3FileSystem(**s3_server.storage_options_with(key="someone-else"))
    assert client_for(first) is client_for(again)
    assert client_for(other) is not client_for(first)
    options = client_for(first).client.meta.config
    assert options.max_pool_connections >= TRANSFER_THREADS
    assert client_for(first).client.meta.endpoint_url == s3_server.endpoint_url
