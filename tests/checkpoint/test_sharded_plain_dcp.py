"""A committed sharded checkpoint is plain DCP on disk: torch.distributed.checkpoint reads it with its own
reader, though grd wrote its tensor records without zip CRC32s (grd's digests cover every byte instead).

The CRC fields are read from the shard files' zip headers here, not from grd."""

from __future__ import annotations

import pathlib
import struct
import warnings
from typing import Any

import torch
import torch.serialization
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint import save as dcp_save

from grd_blocks.checkpoint import RunCheckpoints

CENTRAL_HEADER = b"PK\x01\x02"  # a zip central-directory entry: its CRC-32 field is at offset 16


def _state() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(3)
    return {"w": torch.randn(256, 256, generator=generator), "b": torch.arange(1000), "meta": {"lr": 0.5}}


def _record_crcs(folder: pathlib.Path) -> list[int]:
    """The CRC-32 field of every zip record (central-directory entry) in the folder's shard files."""
    crcs: list[int] = []
    for shard in folder.glob("*.distcp"):
        data = shard.read_bytes()
        at = data.find(CENTRAL_HEADER)
        while at != -1:
            crcs.append(struct.unpack_from("<I", data, at + 16)[0])
            at = data.find(CENTRAL_HEADER, at + 4)
    return crcs


def test_plain_dcp_reads_a_committed_sharded_checkpoint_whose_records_carry_no_zip_crc(
    tmp_path: pathlib.Path,
) -> None:
    state = _state()
    run = RunCheckpoints.from_url(str(tmp_path / "store"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        ref = run.save_sharded(state, step=1)
        plain = tmp_path / "plain"
        dcp_save(state, storage_writer=FileSystemWriter(str(plain)), no_dist=True)
        committed = tmp_path / "store" / ref.name
        into: dict[str, Any] = {"w": torch.zeros(256, 256), "b": torch.zeros(1000, dtype=torch.int64),
                                "meta": {"lr": 0.0}}
        dcp_load(into, storage_reader=FileSystemReader(str(committed)), no_dist=True)
    assert torch.equal(into["w"], state["w"]) and torch.equal(into["b"], state["b"])
    assert into["meta"] == {"lr": 0.5}
    grd_crcs, plain_crcs = _record_crcs(committed), _record_crcs(plain)
    assert grd_crcs and all(crc == 0 for crc in grd_crcs)  # grd skipped torch.save's CRC pass ...
    assert plain_crcs and any(crc != 0 for crc in plain_crcs)  # ... which plain DCP pays
    assert torch.serialization.get_crc32_options() is True  # and left torch's own setting alone
    assert run.verify(ref) == []
