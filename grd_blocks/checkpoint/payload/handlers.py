"""Type handlers: how one top-level value of a checkpoint's state is saved and restored.

Invariant: a handler turns its value into *plain data* (tensors, ints, floats, strings, bools, None, lists,
tuples, dicts), which loads under ``torch.load(weights_only=True)``; its ``type_name`` is recorded in the
manifest so ``load(into=...)`` restores objects (``load_state_dict``) with the handler that saved them.
Handlers never keep references to live objects after ``snapshot``: it deep-copies tensors to CPU.

Lazy imports: this module never imports torch or numpy. A value can only be a torch (numpy) object if its
module is already in ``sys.modules``, so every type test looks the class up there first (``loaded_torch()``);
torch is imported only to encode a numpy array (stored as a tensor).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ClassVar

from grd_blocks.checkpoint.payload.rng import RNG_MARKER
from grd_blocks.checkpoint.payload.serialization import JsonText, json_text
from grd_blocks.errors import CheckpointError, UsageError

_PLAIN_LEAVES = (str, int, float, bool, type(None))
_PLAIN_KEYS = _PLAIN_LEAVES


def loaded_torch() -> ModuleType | None:
    """torch if something already imported it, else None (then no value can be a torch object)."""
    return sys.modules.get("torch")


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in the plain state ``value`` (dicts, lists, tuples); 0 without torch."""
    torch = loaded_torch()
    if torch is None:
        return 0
    if isinstance(value, torch.Tensor):
        return int(value.numel() * value.element_size())
    if isinstance(value, Mapping):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(item) for item in value)
    return 0


def _numpy() -> ModuleType | None:
    return sys.modules.get("numpy")


def _resolve(module: ModuleType | None, dotted: str) -> type | None:
    """``_resolve(torch, "nn.Module")`` -> the class, or None when ``module`` is not loaded."""
    obj: Any = module
    for part in dotted.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def _is_torch(value: object, dotted: str) -> bool:
    kind = _resolve(loaded_torch(), dotted)
    return kind is not None and isinstance(value, kind)


class Handler(ABC):
    """Saves and restores one kind of value; ``type_name`` is what the manifest records."""

    type_name: ClassVar[str]

    @abstractmethod
    def matches(self, value: object) -> bool: ...

    @abstractmethod
    def to_payload(self, value: Any) -> Any:
        """The plain data to store for ``value`` (may share tensors with it; see ``snapshot``)."""

    def from_payload(self, payload: Any) -> Any:
        """The value ``load()`` returns for this key (by default the stored data itself)."""
        return payload

    def restore(self, target: Any, payload: Any, key: str) -> None:
        """Restore ``payload`` into the live object ``target`` in place."""
        raise CheckpointError(
            f"state key {key!r} was saved as {self.type_name}, which cannot be restored into "
            f"{type(target).__name__} in place; read it from the returned state instead of passing it in "
            "into="
        )


class _StateDictHandler(Handler):
    kind: ClassVar[str]  # dotted path under ``torch``

    def matches(self, value: object) -> bool:
        return _is_torch(value, self.kind)

    def to_payload(self, value: Any) -> Any:
        return value.state_dict()

    def restore(self, target: Any, payload: Any, key: str) -> None:
        if not _is_torch(target, self.kind):
            super().restore(target, payload, key)
        target.load_state_dict(payload)


_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's OptimizedModule; DDP / DataParallel


def unwrap_module(module: Any) -> Any:
    """The module inside ``torch.compile`` (``_orig_mod``) and DDP/DataParallel (``module``) wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if inner is None and type(module).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(module, "module", None)
        if inner is None or not _is_torch(inner, "nn.Module"):
            return module
        module = inner


def strip_wrapper_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with the ``_orig_mod.`` / ``module.`` prefixes that every key shares removed (repeatedly),
    so a state dict written from a wrapped model loads into a bare one and the other way round."""
    out = dict(state)
    while out:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(str(key).startswith(p) for key in out)), None)
        if prefix is None:
            return out
        out = {str(key)[len(prefix) :]: value for key, value in out.items()}
    return out


class ModuleHandler(_StateDictHandler):
    """Saves the bare module's state dict (wrapper prefixes never reach a checkpoint) and restores into the
    bare module, whichever way either side was wrapped (``torch.compile``, DDP, DataParallel)."""

    type_name = "torch.nn.Module"
    kind = "nn.Module"

    def to_payload(self, value: Any) -> Any:
        return unwrap_module(value).state_dict()

    def restore(self, target: Any, payload: Any, key: str) -> None:
        if not _is_torch(target, self.kind):
            super().restore(target, payload, key)
        unwrap_module(target).load_state_dict(strip_wrapper_prefixes(payload))


class OptimizerHandler(_StateDictHandler):
    type_name = "torch.optim.Optimizer"
    kind = "optim.Optimizer"


class SchedulerHandler(_StateDictHandler):
    type_name = "torch.optim.lr_scheduler.LRScheduler"
    kind = "optim.lr_scheduler.LRScheduler"


class GradScalerHandler(_StateDictHandler):
    type_name = "torch.amp.GradScaler"
    kind = "amp.GradScaler"


class TensorHandler(Handler):
    type_name = "torch.Tensor"

    def matches(self, value: object) -> bool:
        return _is_torch(value, "Tensor")

    def to_payload(self, value: Any) -> Any:
        return value

    def restore(self, target: Any, payload: Any, key: str) -> None:
        if not _is_torch(target, "Tensor"):
            super().restore(target, payload, key)
        import torch  # loaded: target is a tensor

        with torch.no_grad():
            target.copy_(payload)


def _is_ndarray(value: object) -> bool:
    kind = _resolve(_numpy(), "ndarray")
    return kind is not None and isinstance(value, kind)


class NdarrayHandler(Handler):
    type_name = "numpy.ndarray"

    def matches(self, value: object) -> bool:
        return _is_ndarray(value)

    def to_payload(self, value: Any) -> Any:
        import numpy as np  # loaded: value is an ndarray
        import torch  # stored as a tensor, so saving one needs torch

        return torch.from_numpy(np.ascontiguousarray(value))

    def from_payload(self, payload: Any) -> Any:
        return payload.numpy()

    def restore(self, target: Any, payload: Any, key: str) -> None:
        if not _is_ndarray(target):
            super().restore(target, payload, key)
        target[...] = payload.numpy()


class RngHandler(Handler):
    type_name = "grd.rng"

    def matches(self, value: object) -> bool:
        return isinstance(value, Mapping) and value.get(RNG_MARKER) == 1

    def to_payload(self, value: Any) -> Any:
        return dict(value)


class PlainHandler(Handler):
    """Anything else: must already be plain data (JSON-like values, tensors nested anywhere)."""

    type_name = "plain"

    def matches(self, value: object) -> bool:
        return True

    def to_payload(self, value: Any) -> Any:
        return value

    def restore(self, target: Any, payload: Any, key: str) -> None:
        if isinstance(target, dict) and isinstance(payload, dict):
            target.clear()
            target.update(payload)
            return
        super().restore(target, payload, key)


HANDLERS: tuple[Handler, ...] = (
    ModuleHandler(),
    OptimizerHandler(),
    SchedulerHandler(),
    GradScalerHandler(),
    TensorHandler(),
    NdarrayHandler(),
    RngHandler(),
    PlainHandler(),
)
_BY_NAME = {handler.type_name: handler for handler in HANDLERS}


def handler_for_value(value: object) -> Handler:
    return next(handler for handler in HANDLERS if handler.matches(value))


def handler_named(type_name: str) -> Handler:
    handler = _BY_NAME.get(type_name)
    if handler is None:
        raise CheckpointError(
            f"manifest names handler {type_name!r}, which this grd does not know ({sorted(_BY_NAME)}); "
            "load it with the grd version that wrote it"
        )
    return handler


def check_plain(value: Any, where: str) -> None:
    """Raise ``UsageError`` naming ``where`` if ``value`` holds anything but plain data (JSON data, checked
    in C, is; anything else is walked, to name what is wrong)."""
    if isinstance(value, dict | list) and json_text(value) is not None:
        return
    torch = loaded_torch()
    leaves = _PLAIN_LEAVES if torch is None else (
        *_PLAIN_LEAVES, torch.Tensor, torch.dtype, torch.device, torch.Size)
    found = _problem(value, leaves)
    if found is not None:
        path, what = found
        raise UsageError(f"state {where}{''.join(reversed(path))} {what}")


def _problem(value: Any, leaves: tuple[type, ...]) -> tuple[list[str], str] | None:
    """None if ``value`` is plain data; else the path to the first value that is not (innermost item first)
    and what is wrong with it. The path is built only on the way out of a failure: a model's state holds
    thousands of tensors, and naming each one cost more than checking it."""
    if isinstance(value, leaves):
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, _PLAIN_KEYS):
                return [], f"has key {key!r} of type {type(key).__name__}; use str or int keys"
            found = _problem(item, leaves)
            if found is not None:
                found[0].append(f"[{key!r}]")
                return found
        return None
    if isinstance(value, list | tuple):
        for position, item in enumerate(value):
            found = _problem(item, leaves)
            if found is not None:
                found[0].append(f"[{position}]")
                return found
        return None
    return [], (
        f"is a {type(value).__module__}.{type(value).__qualname__}, which a checkpoint cannot hold (loading "
        "never unpickles arbitrary objects); store tensors, numbers, strings, lists and dicts, or a "
        "module/optimizer/scheduler/GradScaler object"
    )


def encode_state(
    state: Mapping[str, Any], *, copy: Callable[[Any], Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """``state`` -> (plain payload per key, handler type per key); ``copy`` (e.g.
    ``SnapshotBuffers.copy``) snapshots each key's plain data, tensors included, to be written later."""
    payload: dict[str, Any] = {}
    types: dict[str, str] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise UsageError(
                f"state key {key!r} is a {type(key).__name__}; top-level state keys must be strings"
            )
        if isinstance(value, JsonText):  # plain data, checked when it was encoded; immutable, so never copied
            payload[key], types[key] = value, "plain"
            continue
        handler = handler_for_value(value)
        data = handler.to_payload(value)
        check_plain(data, repr(key))
        payload[key] = copy(data) if copy is not None else data
        types[key] = handler.type_name
    return payload, types


def decode_state(payload: Mapping[str, Any], types: Mapping[str, str]) -> dict[str, Any]:
    """Plain payload -> the values ``load()`` returns (ndarrays back to numpy; everything else as stored)."""
    return {key: handler_named(types.get(key, "plain")).from_payload(value) for key, value in payload.items()}


def restore_into(into: Mapping[str, Any], payload: Mapping[str, Any], types: Mapping[str, str]) -> None:
    """Restore each object in ``into`` in place from the stored payload under the same key."""
    for key, target in into.items():
        if key not in payload:
            raise CheckpointError(
                f"load(into=...) names state key {key!r}, but the checkpoint holds {sorted(payload)}; "
                "use the keys you saved with"
            )
        handler_named(types.get(key, "plain")).restore(target, payload[key], key)
