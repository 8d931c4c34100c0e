"""One rank of a sharded-checkpoint test (tests/checkpoint/test_sharded.py starts WORLD_SIZE of these).

``python _sharded_ranks.py SCENARIO STORE [ARGS...]`` with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set;
the process group is gloo on CPU. Each scenario prints one JSON line per result, prefixed ``RESULT ``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

from grd_blocks.checkpoint import RunCheckpoints


def open_run(store: str) -> RunCheckpoints:
    """The run prefix ``store``, with the S3 options the test put in ``TEST_STORAGE_OPTIONS`` (JSON)."""
    options = json.loads(os.environ.get("TEST_STORAGE_OPTIONS", "{}"))
    return RunCheckpoints.from_url(store, storage_options=options)


def emit(**values: Any) -> None:
    print("RESULT " + json.dumps({"rank": dist.get_rank(), **values}), flush=True)


def fsdp_model(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    return model, optimizer


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    batch = torch.randn(6, 5, generator=generator)
    model(batch).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole model and optimizer state, gathered on rank 0 (empty elsewhere)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    return {"model": model_state, "optim": optimizer_state}


def fsdp_save(store: str, step: str, reference: str) -> None:
    """Train ``step`` steps of an FSDP2 model, save it sharded at ``step``, write the full state to
    ``reference`` (rank 0) for the loading side to compare with."""
    model, optimizer = fsdp_model(seed=1)
    for number in range(int(step)):
        train_step(model, optimizer, number)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    ref = open_run(store).save_sharded(
        {"model": model_state, "optim": optimizer_state, "extra": {"step": int(step)}}, step=int(step)
    )
    full = full_state(model, optimizer)
    if dist.get_rank() == 0:
        torch.save(full, reference)
    emit(saved=ref.name, world=dist.get_world_size())


def fsdp_load(store: str, reference: str) -> None:
    """Build the model with other weights, load the latest sharded checkpoint, compare the full state with
    ``reference`` exactly (rank 0), then train one more step (every rank agrees on the result)."""
    model, optimizer = fsdp_model(seed=2)
    train_step(model, optimizer, 99)  # the optimizer has state of its own, to be replaced
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optim": optimizer_state, "extra": {"step": -1}}
    ref = open_run(store).load_sharded(state)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    full = full_state(model, optimizer)
    mismatched: list[str] = []
    if dist.get_rank() == 0:
        expected = torch.load(reference, weights_only=True)
        mismatched = _differences(expected, full, "")
    emit(loaded=ref.name if ref else None, world=dist.get_world_size(), extra=state["extra"],
         mismatched=mismatched)


def _differences(expected: Any, actual: Any, where: str) -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            return [f"{where}: keys {sorted(map(str, expected))} != "
                    f"{sorted(map(str, actual)) if isinstance(actual, dict) else type(actual)}"]
        return [found for key in expected
                for found in _differences(expected[key], actual[key], f"{where}/{key}")]
    if isinstance(expected, torch.Tensor):
        same = (isinstance(actual, torch.Tensor) and actual.shape == expected.shape
                and torch.equal(actual, expected))
        return [] if same else [where]
    return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]


def shard_state(step: int, size: int) -> dict[str, Any]:
    """A plain sharded state: each rank's own tensor filled with ``step`` (a DTensor is not needed to make
    every rank write a file of its own)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    full = torch.full((size * dist.get_world_size(),), float(step))
    return {"weights": distribute_tensor(full, mesh, [Shard(0)]), "step": step}


def save_loop(store: str, size: str) -> None:
    """Save steps 1, 2, 3, ... for ever (each rank's shard holds the step number); rank 0 prints every
    commit. The test kills a rank at a random moment."""
    run = open_run(store)
    latest = run.latest()
    step = 1 if latest is None else latest.index + 1
    while True:
        ref = run.save_sharded(shard_state(step, int(size)), step=step)
        emit(committed=ref.index)
        step += 1


def save_steps(store: str, size: str, steps: str) -> None:
    """Save the given comma-separated steps, in order."""
    run = open_run(store)
    for step in (int(text) for text in steps.split(",")):
        run.save_sharded(shard_state(step, int(size)), step=step)
    emit(saved=steps)


def load_latest(store: str, size: str) -> None:
    """Load the latest valid checkpoint into a state of this world; report what was loaded on this rank."""
    state = shard_state(-1, int(size))
    ref = open_run(store).load_sharded(state)
    local = state["weights"].to_local()
    values = sorted({float(value) for value in local.tolist()})
    emit(loaded=ref.name if ref else None, values=values, step=state["step"])


SCENARIOS: dict[str, Callable[..., None]] = {
    "fsdp_save": fsdp_save, "fsdp_load": fsdp_load, "save_loop": save_loop, "save_steps": save_steps,
    "load_latest": load_latest,
}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(name)s: %(message)s")
    dist.init_process_group("gloo")
    try:
        SCENARIOS[sys.argv[1]](*sys.argv[2:])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
