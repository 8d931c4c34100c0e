"""A local save writes its full pieces to the disk with O_DIRECT, past the page cache, and the file is the
same bytes either way; grd's torch.save writes zip records without CRC32s on its own threads only.

Where the bytes went is read by util-linux's ``fincore`` (the kernel's page-cache residency of the file), not
by grd's bookkeeping."""

from __future__ import annotations

import errno
import io
import os
import pathlib
import subprocess
import zipfile
from typing import Any

import pytest
import torch
import torch.serialization
from torch.utils.serialization import config as torch_serialization_config

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.checkpoint.payload.serialization import PIECE_BYTES, PieceStream
from grd_blocks.checkpoint.storage import commit

PAGE = 4096


def _state(pieces: float) -> dict[str, Any]:
    size = int(pieces * PIECE_BYTES)
    weights = torch.randint(0, 255, (size,), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    return {"w": weights, "step": 3}


def _resident_bytes(path: pathlib.Path) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return int(out.strip())


def _saved_file(store: pathlib.Path) -> pathlib.Path:
    (found,) = store.glob("*/state.pt")
    return found


def test_a_local_save_sends_its_full_pieces_past_the_page_cache_and_loads_bit_for_bit(
    tmp_path: pathlib.Path,
) -> None:
    state = _state(3.5)
    run = RunCheckpoints.from_url(str(tmp_path / "store"))
    run.save(state, step=1)
    saved = _saved_file(tmp_path / "store")
    size = saved.stat().st_size
    assert size > 3 * PIECE_BYTES
    # only the last, shorter piece went through the page cache: the three full ones were written direct
    assert _resident_bytes(saved) <= size - 3 * PIECE_BYTES + PAGE
    loaded = run.load()
    assert loaded is not None and torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3


def test_with_direct_io_switched_off_the_same_bytes_go_through_the_page_cache(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state(2.5)
    RunCheckpoints.from_url(str(tmp_path / "direct")).save(state, step=1)
    monkeypatch.setenv("GRD_CHECKPOINT_DIRECT_IO", "0")
    RunCheckpoints.from_url(str(tmp_path / "cached")).save(state, step=1)
    direct, cached = _saved_file(tmp_path / "direct"), _saved_file(tmp_path / "cached")
    assert _resident_bytes(cached) >= cached.stat().st_size  # every page went through the cache
    assert _resident_bytes(direct) < 2 * PIECE_BYTES
    assert direct.read_bytes() == cached.read_bytes()


def test_a_filesystem_that_refuses_direct_io_part_way_gets_the_rest_through_the_page_cache(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mock, for a fault this kernel's filesystems do not cause (ext4 and tmpfs both take 4 KiB-aligned
    O_DIRECT writes): the O_DIRECT descriptor accepts one piece, then answers EINVAL."""
    direct_fds: list[int] = []
    open_direct, real_pwrite = commit._open_direct, os.pwrite

    def recorded(path: str) -> int | None:
        fd = open_direct(path)
        if fd is not None:
            direct_fds.append(fd)
        return fd

    writes: list[int] = []

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if fd in direct_fds:
            writes.append(fd)
            if len(writes) > 1:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(commit, "_open_direct", recorded)
    monkeypatch.setattr(commit.os, "pwrite", pwrite)
    state = _state(3.5)
    run = RunCheckpoints.from_url(str(tmp_path / "store"))
    run.save(state, step=1)
    assert len(writes) == 2  # one accepted, one refused, none tried after
    monkeypatch.undo()
    assert run.verify("step_1") == [] and _saved_file(tmp_path / "store").stat().st_size > 3 * PIECE_BYTES
    loaded = run.load()
    assert loaded is not None and torch.equal(loaded["w"], state["w"])


def test_grd_saves_without_zip_crcs_while_torch_save_on_other_threads_keeps_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = _state(2.5)
    stream = PieceStream(state, readers=1, window=2, aligned=True)
    assert stream.piece(0) is not None  # the producer thread is inside grd's torch.save now
    elsewhere = io.BytesIO()
    torch.save({"x": torch.arange(10)}, elsewhere)  # this thread, meanwhile
    for number, _ in enumerate(stream):
        stream.release(number)
    assert zipfile.ZipFile(elsewhere).testzip() is None  # every CRC there and right
    grd_bytes = io.BytesIO(bytes(b"".join(bytes(p) for p in _pieces_of(state))))
    assert zipfile.ZipFile(grd_bytes).testzip() is not None  # grd's records carry no CRC
    grd_bytes.seek(0)
    assert torch.equal(torch.load(grd_bytes, weights_only=True)["w"], state["w"])  # torch reads it as any
    assert torch.serialization.get_crc32_options() is True  # torch's own setting is untouched
    monkeypatch.setattr(torch_serialization_config.save, "compute_crc32", False)
    expected = io.BytesIO()
    torch.save(state, expected)
    assert grd_bytes.getvalue() == expected.getvalue()  # otherwise torch.save's very bytes


def _pieces_of(state: dict[str, Any]) -> list[bytes]:
    stream = PieceStream(state)
    return [bytes(piece) for piece in stream]
