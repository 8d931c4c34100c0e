"""Loading never runs code: pickles outside the weights-only set are refused; our RNG state loads."""

from __future__ import annotations

import io
import pathlib

import pytest
import torch

from grd_blocks.checkpoint import capture_rng_state
from grd_blocks.checkpoint.payload.manifest import FileEntry, Manifest, now_iso, sha256_hex
from grd_blocks.errors import UnsafeCheckpoint
from tests.checkpoint.conftest import Backend


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (pathlib.Path.touch, (self.marker,))  # type: ignore[return-value]


def test_pickle_that_would_run_code_is_refused(backend: Backend, tmp_path: pathlib.Path) -> None:
    run = backend.run("evil")
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"x": Payload(str(marker))}, buffer)
    data = buffer.getvalue()
    manifest = Manifest(
        unit="step",
        index=1,
        files={"state.pt": FileEntry(len(data), sha256_hex(data))},
        payload_format="torch",
        handlers={"x": "plain"},
        created_at=now_iso(),
        writer="attacker",
    )
    fs = run.fs
    fs.makedirs(f"{run.path}/step_1", exist_ok=True)
    fs.pipe_file(f"{run.path}/step_1/state.pt", data)
    fs.pipe_file(f"{run.path}/step_1/MANIFEST.json", manifest.to_bytes())
    with pytest.raises(UnsafeCheckpoint, match="weights-only"):
        run.load()
    assert not marker.exists()


def test_rng_state_loads_under_weights_only_without_allow_listing() -> None:
    import numpy as np

    state = capture_rng_state(
        numpy_generators={"pcg": np.random.default_rng(1), "mt": np.random.Generator(np.random.MT19937(2))}
    )
    buffer = io.BytesIO()
    torch.save({"rng": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert torch.equal(loaded["rng"]["torch_cpu"], state["torch_cpu"])
    assert loaded["rng"]["numpy_generators"]["pcg"] == state["numpy_generators"]["pcg"]


def test_objects_that_cannot_be_stored_are_rejected_at_save(backend: Backend) -> None:
    from grd_blocks.errors import UsageError

    with pytest.raises(UsageError, match=r"'cfg'.*Payload"):
        backend.run().save({"cfg": Payload("nope")}, step=0)
