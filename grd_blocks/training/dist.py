"""The few torch.distributed calls the training helpers need, each a no-op when not distributed.

Invariant: every function here is a collective when ``torch.distributed`` is initialized (every rank must call
it, in the same order) and a local identity otherwise, so the same loop runs standalone and under torchrun.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def agree_max(values: list[int]) -> list[int]:
    """Element-wise max of ``values`` over all ranks (how ranks agree to stop at the same step)."""
    if not active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(v) for v in tensor.tolist()]


def gather(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (picklable values only)."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
