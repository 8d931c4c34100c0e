"""Async-save snapshots: exact host copies, buffers reused only after their write finished."""

from __future__ import annotations

import torch

from grd_blocks.checkpoint.payload.snapshot import SnapshotBuffers
from tests.checkpoint.conftest import Backend


def test_copy_is_an_exact_detached_host_copy_of_every_tensor() -> None:
    buffers = SnapshotBuffers()
    weight = torch.randn(4, 3, requires_grad=True)
    transposed = torch.randn(3, 5).t()  # not contiguous
    state = {"w": weight, "nested": [transposed, (torch.arange(6, dtype=torch.int16), 7)], "lr": 0.1}

    copy = buffers.copy(state)

    assert torch.equal(copy["w"], weight.detach()) and not copy["w"].requires_grad
    assert copy["w"].data_ptr() != weight.data_ptr()
    assert torch.equal(copy["nested"][0], transposed) and copy["nested"][0].shape == (5, 3)
    assert copy["nested"][1][0].dtype == torch.int16 and copy["nested"][1][1] == 7
    assert copy["lr"] == 0.1 and isinstance(copy["nested"][1], tuple)


def test_released_buffers_serve_the_next_copy_of_the_same_dtype_and_shape() -> None:
    buffers = SnapshotBuffers()
    first = buffers.copy({"w": torch.ones(1024)})
    held = first["w"].data_ptr()
    buffers.release(first)
    assert buffers.pooled_bytes == 1024 * 4

    second = buffers.copy({"w": torch.full((1024,), 2.0)})

    assert second["w"].data_ptr() == held
    assert torch.equal(second["w"], torch.full((1024,), 2.0))
    assert buffers.pooled_bytes == 0


def test_a_buffer_still_being_written_is_never_handed_out() -> None:
    buffers = SnapshotBuffers()
    first = buffers.copy({"w": torch.ones(256)})
    second = buffers.copy({"w": torch.zeros(256)})  # the first write has not released its payload

    assert first["w"].data_ptr() != second["w"].data_ptr()
    assert torch.equal(first["w"], torch.ones(256))


def test_a_different_dtype_or_shape_gets_a_fresh_buffer() -> None:
    buffers = SnapshotBuffers()
    first = buffers.copy({"w": torch.ones(64)})
    buffers.release(first)

    other = buffers.copy({"w": torch.ones(64, dtype=torch.float64), "v": torch.ones(8, 8)})

    assert {other["w"].data_ptr(), other["v"].data_ptr()}.isdisjoint({first["w"].data_ptr()})
    assert other["w"].dtype == torch.float64 and other["v"].shape == (8, 8)


def test_each_async_save_written_holds_the_state_of_its_call_and_the_newest_is_always_written(
    backend: Backend,
) -> None:
    run = backend.run()
    weights = torch.zeros(4096)
    for step in range(4):
        run.save_async({"w": weights}, step=step)
        weights.add_(1.0)  # the loop mutates right after each call, while the write may still run
    run.flush()

    committed = [ref.index for ref in backend.run().checkpoints()]  # a separate handle reads the store
    assert committed[-1] == 3  # the newest is always written; one still waiting when a newer came is not
    assert sorted([*committed, *(int(name.split("_")[1]) for name in run.superseded)]) == [0, 1, 2, 3]
    for step in committed:
        loaded = run.load(step=step)
        assert loaded is not None and torch.equal(loaded["w"], torch.full((4096,), float(step)))
