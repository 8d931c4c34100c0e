"""A payload serialized as a stream: the same bytes as serialize's pieces, readable piece by piece while
torch.save still runs, and a failure of torch.save reaches the reader as that failure."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest
import torch
from torch.utils.serialization import config as torch_serialization_config

from grd_blocks.checkpoint.payload import serialization
from grd_blocks.checkpoint.payload.digest import digest_later
from grd_blocks.checkpoint.payload.serialization import PIECE_BYTES, Pieces, PieceStream, serialize


def _state(size: int) -> dict[str, Any]:
    weights = torch.randint(0, 255, (size,), dtype=torch.uint8, generator=torch.Generator().manual_seed(size))
    return {"w": weights, "step": (3, "x")}


@pytest.mark.parametrize("size", [10, PIECE_BYTES, 5 * PIECE_BYTES // 2])
def test_a_stream_gives_the_same_pieces_and_digests_as_serialize(size: int) -> None:
    state = _state(size)
    whole, _ = serialize(state)
    streamed, payload_format = serialize(state, stream=True)
    stream = streamed["state.pt"]
    assert payload_format == "torch" and isinstance(stream, PieceStream)
    entry = digest_later(stream, "sha256")
    pieces = list(stream)
    expected = whole["state.pt"]
    assert pieces == list(expected.pieces if isinstance(expected, Pieces) else (expected,))
    assert stream.piece(len(pieces)) is None  # past the end: no such piece
    assert bytes(stream) == bytes(expected) and len(stream) == len(expected)
    assert entry() == digest_later(expected, "sha256")()  # the same manifest entry, streamed or not
    assert stream.stop() is None  # it had finished; stopping it now changes nothing


def test_plain_json_state_is_never_streamed() -> None:
    files, payload_format = serialize({"rows": [1, 2]}, stream=True)
    assert payload_format == "json" and files == {"state.json": b'{"rows": [1, 2]}'}


def test_a_reader_gets_the_first_piece_while_torch_save_is_still_writing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Holding torch.save inside its writes is the only way to observe "still writing"; the bytes are real.
    release = threading.Event()
    real_write = serialization._PieceWriter.write

    def write_then_wait(self: Any, data: Any) -> int:
        written = real_write(self, data)
        if len(memoryview(data).cast("B")) >= 2 * PIECE_BYTES:  # the tensor's storage: two pieces out
            release.wait(timeout=60)
        return written

    monkeypatch.setattr(serialization._PieceWriter, "write", write_then_wait)
    stream = PieceStream(_state(3 * PIECE_BYTES))
    try:
        first = stream.piece(0)
        assert first is not None and len(first) == PIECE_BYTES
        assert not stream._done  # the point of the test: torch.save has not returned
    finally:
        release.set()
    assert len(stream) > 3 * PIECE_BYTES


def test_a_failure_inside_torch_save_reaches_the_reader_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # A mock of a fault: torch.save fails only when memory runs out, which a test cannot cause safely.
    # (torch's zip writer then fails closing the archive, with an error of its own that must not hide it.)
    real_write = serialization._PieceWriter._write
    calls = []

    def fail_after_a_piece(self: Any, data: Any) -> int:
        calls.append(1)
        if len(calls) == 40:
            raise MemoryError("injected: out of memory while serializing")
        return real_write(self, data)

    monkeypatch.setattr(serialization._PieceWriter, "_write", fail_after_a_piece)
    stream = PieceStream({"a": _state(3 * PIECE_BYTES)["w"], "b": [torch.zeros(3) for _ in range(50)]})
    with pytest.raises(MemoryError, match="injected"):
        list(stream)
    with pytest.raises(MemoryError, match="injected"):
        stream.complete()
    error = stream.stop()
    assert isinstance(error, MemoryError)


def test_stopping_a_stream_ends_its_producer_and_is_not_reported_as_its_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # torch.save is held before its second write until the stop has been asked for, so it lands mid-way.
    streams: list[PieceStream] = []
    real_write = serialization._PieceWriter.write
    writes = []

    def write_after_the_stop(self: Any, data: Any) -> int:
        writes.append(1)
        if len(writes) == 2:
            stream = streams[0]
            with stream._changed:
                assert stream._changed.wait_for(lambda: stream._stopped, timeout=60)
        return real_write(self, data)

    monkeypatch.setattr(serialization._PieceWriter, "write", write_after_the_stop)
    tensors = [torch.zeros(PIECE_BYTES // 4) for _ in range(4)]  # four pieces' worth
    stream = PieceStream.__new__(PieceStream)
    streams.append(stream)
    PieceStream.__init__(stream, {"w": tensors})
    assert stream.stop() is None  # stopped by us: no failure of its own
    assert not stream._thread.is_alive() and stream._refused  # it gave up mid-way
    assert len(stream._pieces) < 4


def test_torch_save_output_and_stream_agree_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state(PIECE_BYTES + 17)
    monkeypatch.setattr(torch_serialization_config.save, "compute_crc32", False)  # grd writes no zip CRCs
    expected = io.BytesIO()
    torch.save(state, expected)
    assert bytes(PieceStream(state)) == expected.getvalue()
