"""Every truncation and every bit flip of a committed checkpoint is detected; the damage is never loaded.

Store: step_0 and step_1 committed (small JSON state). For each file of step_1 (payload, MANIFEST.json) and
for
LATEST.json, every truncation length and a seeded sample of 2,500 single-bit flips (local disk; 80 random
damages on S3) is written over the committed bytes, and a reader must then load exactly a committed state:
step_0 when step_1 is damaged (with a warning), step_1 when only the LATEST pointer is.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from grd_blocks.checkpoint import CheckpointEngine
from tests.checkpoint_faults._states import state_for
from tests.fixtures.seaweed import SeaweedServer

RUN = "corrupt"
SIZE = 24


@dataclass(frozen=True)
class Damage:
    file: str  # path inside the run directory
    kind: str  # "truncate" | "flip"
    at: int  # truncation length, or bit number

    def apply(self, original: bytes) -> bytes:
        if self.kind == "truncate":
            return original[: self.at]
        data = bytearray(original)
        data[self.at // 8] ^= 1 << (self.at % 8)
        return bytes(data)


def all_damages(files: dict[str, bytes]) -> Iterator[Damage]:
    for name, data in files.items():
        for length in range(len(data)):
            yield Damage(name, "truncate", length)
        for bit in range(len(data) * 8):
            yield Damage(name, "flip", bit)


def _committed(url: str, fs: fsspec.AbstractFileSystem, root: str) -> dict[str, bytes]:
    engine = CheckpointEngine(url, fs=fs)
    engine.save_checkpoint(RUN, state=state_for(0, SIZE), step=0)
    engine.save_checkpoint(RUN, state=state_for(1, SIZE), step=1)
    names = [f"step_1/{p.rsplit('/', 1)[-1]}" for p in fs.ls(f"{root}/{RUN}/step_1", detail=False)]
    assert sorted(names) == ["step_1/MANIFEST.json", "step_1/state.json"], names
    return {name: fs.cat_file(f"{root}/{RUN}/{name}") for name in [*names, "LATEST.json"]}


def _check(
    damages: list[Damage], url: str, make_fs: Callable[[], fsspec.AbstractFileSystem], root: str
) -> None:
    fs = make_fs()
    originals = _committed(url, fs, root)
    reader = CheckpointEngine(url, fs=fs)
    undetected: list[str] = []
    for damage in damages:
        original = originals[damage.file]
        path = f"{root}/{RUN}/{damage.file}"
        fs.pipe_file(path, damage.apply(original))
        try:
            loaded = reader.load_checkpoint(RUN)
            ref = reader.latest_checkpoint(RUN)
        finally:
            fs.pipe_file(path, original)
        if damage.file == "LATEST.json":
            # a damaged pointer only costs a scan: step_1 is intact and is still the latest
            assert ref is not None and ref.index == 1, damage
            assert loaded == state_for(1, SIZE), damage
        elif loaded != state_for(0, SIZE):
            assert loaded is not None, damage
            assert loaded == state_for(1, SIZE), (damage, "loaded a state that was never saved")
            undetected.append(f"{damage.kind} {damage.file} at {damage.at}")
    assert not undetected, (
        f"{len(undetected)} damaged checkpoints were loaded as if intact, e.g. {undetected[:10]}"
    )


def test_every_truncation_and_bit_flip_is_detected_on_local_disk(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    fs = LocalFileSystem()
    every = list(all_damages(_committed(root + "-probe", fs, root + "-probe")))
    # every truncation of every file, and a seeded sample of 2,500 of the ~9,000 single-bit flips
    truncations = [damage for damage in every if damage.kind == "truncate"]
    flips = random.Random(11).sample([damage for damage in every if damage.kind == "flip"], 2500)
    _check(truncations + flips, root, LocalFileSystem, root)


@pytest.mark.s3
def test_sampled_truncations_and_bit_flips_are_detected_on_s3(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    url = f"{s3_bucket}/store"
    probe = s3_server.filesystem()
    root = url.removeprefix("s3://")
    files = _committed(url + "-probe", probe, root + "-probe")
    damages = random.Random(7).sample(list(all_damages(files)), 80)
    _check(damages, url, s3_server.filesystem, root)
