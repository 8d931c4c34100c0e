"""Async-save snapshots: exact host copies, buffers reused only after their write finished."""

from __future__ import annotations

import os
import select
import signal
from typing import Any

import pytest
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


def _model_like_state(params: int) -> dict[str, Any]:
    """A model's state_dict and Adam's state for it: ``4 * params`` tensors of mixed sizes and dtypes, with
    0-dim steps, an empty tensor, a bool mask, a parameter that requires grad and a tied (shared) one."""
    sizes = [16 + 4096 * (i % 7) for i in range(params)]
    model: dict[str, Any] = {f"layer{i}.weight": torch.randn(size) for i, size in enumerate(sizes)}
    model["layer0.weight"].requires_grad_(True)
    model["embed.tied"] = model["layer1.weight"]
    model["mask"] = torch.rand(333) > 0.5
    model["empty"] = torch.empty(0, 3)
    model["ids"] = torch.arange(1000, dtype=torch.int64).reshape(10, 100)
    moments = {i: {"step": torch.tensor(float(i)), "exp_avg": torch.randn(size),
                   "exp_avg_sq": torch.rand(size, dtype=torch.float64)} for i, size in enumerate(sizes)}
    optim = {"state": moments,
             "param_groups": [{"lr": 1e-3, "params": list(range(params))}]}
    return {"model": model, "optim": optim, "epoch": 3}


def _host_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _host_tensors(item)]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _host_tensors(item)]
    return []


def _assert_exact_copy(copy: Any, state: Any) -> None:
    """``copy`` has the same structure and values as ``state``, and no tensor of it shares memory with one of
    ``state`` (checked pair by pair, by an independent walk)."""
    copied, original = _host_tensors(copy), _host_tensors(state)
    assert len(copied) == len(original)
    for host, source in zip(copied, original, strict=True):
        assert host.dtype == source.dtype and host.shape == source.shape and not host.requires_grad
        assert torch.equal(host, source.detach())
        assert source.numel() == 0 or host.data_ptr() != source.data_ptr()
    assert copy["optim"]["param_groups"] == state["optim"]["param_groups"] and copy["epoch"] == 3


def test_a_model_sized_state_is_copied_exactly_in_one_batch_and_every_buffer_is_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A state of 2,000 tensors (5 MiB, enough to split the copy over the caller's and the helper's thread)
    is copied exactly; ``owned`` gets every host tensor; released, each buffer serves the next copy and no
    new one is allocated."""
    state = _model_like_state(500)
    buffers = SnapshotBuffers()
    owned: list[Any] = []
    copy = buffers.copy(state, owned)
    _assert_exact_copy(copy, state)
    made = {t.data_ptr() for t in _host_tensors(copy) if t.numel()}
    assert {t.data_ptr() for t in owned if t.numel()} == made

    buffers.release(owned)
    for tensor in _host_tensors(state):  # the loop updates every tensor in place before the next save
        tensor.detach().add_(1) if tensor.dtype != torch.bool else tensor.logical_not_()
    allocated = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: allocated.append(a) or real_empty(*a, **k))
    again: list[Any] = []
    second = buffers.copy(state, again)

    _assert_exact_copy(second, state)
    assert allocated == []
    assert {t.data_ptr() for t in again} == {t.data_ptr() for t in owned}


def test_the_copy_split_over_two_threads_covers_every_tensor_once() -> None:
    """Tensors of very different sizes (one holding most of the bytes, at either end): the two halves meet
    without a gap or an overlap, and the copies made on the helper's thread are detached too (grad mode is
    per thread)."""
    for order in (1, -1):
        tensors = [torch.randn(2**20), *(torch.randn(17) for _ in range(50)), torch.randn(3 * 2**20)][::order]
        for tensor in (tensors[0], tensors[-1]):  # a parameter at each end: one of them in the helper's half
            tensor.requires_grad_(True)
        copy = SnapshotBuffers().copy({"t": tensors})
        pairs = zip(copy["t"], tensors, strict=True)
        assert all(torch.equal(host, source.detach()) for host, source in pairs)
        assert not any(host.requires_grad or host.grad_fn is not None for host in copy["t"])


def test_a_forked_child_copies_with_a_helper_thread_of_its_own() -> None:
    """The helper thread does not survive a fork: a child of a process that has copied before copies too
    (it would wait forever on the parent's thread)."""
    buffers = SnapshotBuffers()
    state = _model_like_state(500)
    buffers.copy(state)  # the parent's helper thread exists now
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            copy = buffers.copy(state)
            _assert_exact_copy(copy, state)
            os.write(writer, b"ok")
        finally:
            os._exit(0)
    os.close(writer)
    try:
        with os.fdopen(reader, "rb") as answer:
            ready, _, _ = select.select([answer], [], [], 60)
            said = answer.read() if ready else b"no answer in 60 s"
    finally:
        os.kill(child, signal.SIGKILL) if said != b"ok" else None
        os.waitpid(child, 0)
    assert said == b"ok"
