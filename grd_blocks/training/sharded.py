"""The sharded mode of ``ResumableTraining``: FSDP2 (``fully_shard``) modules and their optimizers saved and
loaded by every rank through ``RunCheckpoints.save_sharded``/``load_sharded`` (checkpoint/sharded.py).

Invariants:

* A training state in the sharded mode is one DCP state dict: ``model:{key}`` for each module (its
  ``get_model_state_dict``, DTensor shards), ``optim:{key}`` for each optimizer (``get_optimizer_state_dict``
  against the module that holds its parameters) and ``grd``: the rest (position, layout, every rank's RNG
  state, schedulers, plain values, other objects), encoded by grd's own handlers and serializer into one
  bytes value, read back with ``torch.load(weights_only=True)`` (the single-file payload's rules).
* Loading builds the same dict from the live objects, fills it (DCP reshards N -> M ranks), then sets the
  modules and optimizers from it (``set_model_state_dict``/``set_optimizer_state_dict``) and restores the
  rest in place, as a single-file resume does.
* ``is_sharded(objects)``: some module in ``objects`` holds a DTensor parameter (FSDP2 made it so).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from grd_blocks.checkpoint.payload.handlers import decode_state, encode_state, restore_into
from grd_blocks.checkpoint.payload.serialization import (
    JSON_FILE,
    TORCH_FILE,
    deserialize,
    pieces_of,
    serialize,
)
from grd_blocks.errors import CheckpointCorrupt, ConfigError

GRD_KEY = "grd"
"""The DCP state key of the rest of the training state (one bytes value)."""


def is_sharded(objects: Mapping[str, Any]) -> bool:
    """Whether a module in ``objects`` holds DTensor parameters (FSDP2's ``fully_shard``). Costs no import:
    where torch's DTensor module was never imported, no parameter can be one."""
    if "torch.distributed.tensor" not in sys.modules:
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(value, nn.Module) and any(isinstance(p, DTensor) for p in value.parameters())
               for value in objects.values())


def _owner(optimizer: torch.optim.Optimizer, modules: Mapping[str, nn.Module], key: str) -> nn.Module:
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in modules.values():
        if params & {id(p) for p in module.parameters()}:
            return module
    raise ConfigError(
        f"optimizer {key!r} optimizes no parameter of the modules passed to ResumableTraining "
        f"({sorted(modules)}); pass the module it trains too"
    )


def split(objects: Mapping[str, Any]) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer],
                                                dict[str, Any]]:
    """``objects`` as (modules, optimizers, everything else)."""
    modules = {key: value for key, value in objects.items() if isinstance(value, nn.Module)}
    optimizers = {key: value for key, value in objects.items() if isinstance(value, torch.optim.Optimizer)}
    rest = {key: value for key, value in objects.items() if key not in modules and key not in optimizers}
    return modules, optimizers, rest


def _encode(rest: Mapping[str, Any]) -> bytes:
    payload, types = encode_state(rest)
    files, payload_format = serialize(payload)
    name = TORCH_FILE if payload_format == "torch" else JSON_FILE
    header = json.dumps({"format": payload_format, "types": types}).encode()
    return header + b"\n" + b"".join(bytes(piece) for piece in pieces_of(files[name]))


def _decode(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, str]]:
    head, _, body = data.partition(b"\n")
    try:
        header = json.loads(head)
        payload_format, types = str(header["format"]), dict(header["types"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointCorrupt(f"{where}: its '{GRD_KEY}' value has no valid header") from None
    name = TORCH_FILE if payload_format == "torch" else JSON_FILE
    payload = deserialize({name: body}, payload_format, where=where)
    if not isinstance(payload, dict):
        raise CheckpointCorrupt(f"{where}: its '{GRD_KEY}' value is not a dict")
    return payload, types


def state_dict(objects: Mapping[str, Any], rest: Mapping[str, Any] | None) -> dict[str, Any]:
    """The DCP state dict of ``objects`` (modules, optimizers) plus ``rest`` encoded as ``grd`` (None: an
    empty placeholder, for loading into)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    modules, optimizers, _ = split(objects)
    out: dict[str, Any] = {f"model:{key}": get_model_state_dict(module) for key, module in modules.items()}
    for key, optimizer in optimizers.items():
        out[f"optim:{key}"] = get_optimizer_state_dict(_owner(optimizer, modules, key), optimizer)
    out[GRD_KEY] = b"" if rest is None else _encode(rest)
    return out


def restore(objects: Mapping[str, Any], loaded: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Set the modules and optimizers of ``objects`` from ``loaded`` (a filled ``state_dict``), restore the
    other objects in place; the decoded rest (position, RNG, values)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    modules, optimizers, others = split(objects)
    for key, module in modules.items():
        set_model_state_dict(module, loaded[f"model:{key}"])
    for key, optimizer in optimizers.items():
        set_optimizer_state_dict(_owner(optimizer, modules, key), optimizer, loaded[f"optim:{key}"])
    payload, types = _decode(bytes(loaded[GRD_KEY]), where)
    if others:
        restore_into(others, payload, types)
    return decode_state(payload, types)
