"""A real model + AdamW + StepLR + RNG resumed from a checkpoint continues bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from grd_blocks.checkpoint import capture_rng_state, restore_rng_state
from tests.checkpoint.conftest import Backend


def _make() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def _train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: np.random.Generator,
    steps: int,
) -> list[float]:
    losses = []
    for _ in range(steps):
        # Python's global `random` is left out of the loss on purpose: library threads (botocore retry jitter
        # on the S3 backend) may draw from it at any moment. Its round trip is asserted directly below.
        x = torch.randn(4, 8) + float(gen.normal())
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("use_async", [False, True])
def test_resumed_training_matches_uninterrupted_bit_for_bit(backend: Backend, use_async: bool) -> None:
    torch.manual_seed(0)
    random.seed(0)
    gen = np.random.default_rng(0)
    model, opt, sched = _make()
    _train(model, opt, sched, gen, 3)
    run = backend.run()
    state = {
        "model": model,
        "optimizer": opt,
        "scheduler": sched,
        "rng": capture_rng_state(numpy_generators={"data": gen}),
    }
    python_state = random.getstate()
    if use_async:
        run.save_async(state, epoch=3)
        run.flush()
    else:
        run.save(state, epoch=3)
    expected = _train(model, opt, sched, gen, 3)
    expected_params = [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(123)  # a fresh process would start from different RNG states
    random.seed(123)
    gen2 = np.random.default_rng(999)
    model2, opt2, sched2 = _make()
    loaded = run.load(into={"model": model2, "optimizer": opt2, "scheduler": sched2})
    assert loaded is not None
    restore_rng_state(loaded["rng"], numpy_generators={"data": gen2})
    assert random.getstate() == python_state
    assert _train(model2, opt2, sched2, gen2, 3) == expected
    assert all(torch.equal(a, b) for a, b in zip(expected_params, model2.parameters(), strict=True))
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_grad_scaler_and_ndarray_round_trip(backend: Backend) -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    run = backend.run()
    run.save({"scaler": scaler, "array": array}, step=1)
    restored = torch.amp.GradScaler("cpu", init_scale=1.0)
    target = np.zeros((2, 3), dtype=np.float32)
    loaded = run.load(into={"scaler": restored, "array": target})
    assert loaded is not None and restored.get_scale() == 1024.0
    assert np.array_equal(target, array) and np.array_equal(loaded["array"], array)
