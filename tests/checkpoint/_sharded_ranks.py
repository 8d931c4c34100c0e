"""One rank of a sharded-checkpoint test (tests/checkpoint/test_sharded.py starts WORLD_SIZE of these).

``python _sharded_ranks.py SCENARIO STORE [ARGS...]`` with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set;
the process group is gloo on CPU. Each scenario prints one JSON line per result, prefixed ``RESULT ``.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import GrdError

GATE_LIMIT_S = 60.0
"""A safety net only: a gate never opened fails the write after this long instead of hanging the test."""


class Held:
    """A state value whose pickling, which DCP does in the (background) write, waits until ``gate`` opens:
    it holds that rank's write at a known point. Staging keeps it as it is (``__deepcopy__``); it is stored
    as ``OrderedDict(held=True)``."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.entered = threading.Event()
        """Set once the write has reached this value."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Held:
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        self.entered.set()
        if not self.gate.wait(GATE_LIMIT_S):
            raise RuntimeError("the test never opened the gate of this write")
        return (collections.OrderedDict, ((("held", True),),))


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


def fsdp_save(store: str, step: str, reference: str, mode: str = "sync") -> None:
    """Train ``step`` steps of an FSDP2 model, save it sharded at ``step``, write the full state to
    ``reference`` (rank 0) for the loading side to compare with. ``async``: save_sharded_async, then (while
    it may still be written) gather the full state and train one more step, then flush."""
    model, optimizer = fsdp_model(seed=1)
    for number in range(int(step)):
        train_step(model, optimizer, number)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optimizer_state, "extra": {"step": int(step)}}
    run = open_run(store)
    if mode == "async":
        run.save_sharded_async(state, step=int(step))
        full = full_state(model, optimizer)  # collectives on the default group beside the background save
        full = {key: copy.deepcopy(value) for key, value in full.items()}  # its "step" tensors are live
        train_step(model, optimizer, int(step))  # changes every parameter and the optimizer state
        state["extra"]["step"] = -1
        run.flush()
        ref = run.latest()
        assert ref is not None
    else:
        ref = run.save_sharded(state, step=int(step))
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


def save_loop(store: str, size: str, mode: str = "sync") -> None:
    """Save steps 1, 2, 3, ... for ever (each rank's shard holds the step number); rank 0 prints every
    commit. ``async``: save_sharded_async each step beside an all_reduce of the loop's own; rank 0 prints
    once the first is committed. The test kills a rank, or all, at a random moment."""
    run = open_run(store)
    latest = run.latest()
    step = 1 if latest is None else latest.index + 1
    first = True
    while True:
        if mode == "async":
            run.save_sharded_async(shard_state(step, int(size)), step=step)
            if first:
                run.flush()
                emit(committed=step)
                first = False
            total = torch.ones(1)
            dist.all_reduce(total)  # the loop's own collective, beside the background saves
        else:
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


def async_held(store: str, size: str) -> None:
    """save_sharded_async of step 1 with rank 1's write held until rank 1's loop has done its next step (a
    collective on the default group) and both ranks have looked at the store; the state is changed right
    after the call."""
    run, rank = open_run(store), dist.get_rank()
    gate = threading.Event()
    if rank == 0:
        gate.set()  # only rank 1's write is held
    state = shard_state(1, int(size))
    state[f"held_{rank}"] = Held(gate)
    run.save_sharded_async(state, step=1)
    local = state["weights"].to_local()
    local.fill_(99.0)  # after the call: must not reach the checkpoint
    total = torch.ones(1)
    dist.all_reduce(total)  # the loop's next step
    latest = run.latest()
    emit(stepped=float(total), latest_while_held=latest.name if latest else None,
         changed=sorted({float(value) for value in state["weights"].to_local().tolist()}))
    dist.barrier()  # both ranks have looked before rank 1's write may go on
    gate.set()
    run.flush()
    latest = run.latest()
    emit(committed=latest.name if latest else None)


def async_fail(store: str, size: str) -> None:
    """save_sharded_async of step 1 whose write fails on rank 1 only (a value DCP cannot pickle); then every
    rank calls save_sharded of step 2 (which raises that failure), again (which commits), and an async step 3
    and flush."""
    run, rank = open_run(store), dist.get_rank()
    state = shard_state(1, int(size))
    state[f"bad_{rank}"] = (lambda: None) if rank == 1 else 0
    run.save_sharded_async(state, step=1)
    raised = None
    try:
        run.save_sharded(shard_state(2, int(size)), step=2)
    except GrdError as exc:
        raised = f"{type(exc).__name__}: {exc}"
    ref = run.save_sharded(shard_state(2, int(size)), step=2)
    run.save_sharded_async(shard_state(3, int(size)), step=3)
    run.flush()
    latest = run.latest()
    emit(raised=raised, second=ref.name, latest=latest.name if latest else None)


SCENARIOS: dict[str, Callable[..., None]] = {
    "fsdp_save": fsdp_save, "fsdp_load": fsdp_load, "save_loop": save_loop, "save_steps": save_steps,
    "load_latest": load_latest, "async_held": async_held, "async_fail": async_fail,
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
