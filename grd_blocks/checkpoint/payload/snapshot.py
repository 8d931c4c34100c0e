"""Host copies of a state's tensors for a background save, in buffers reused from one save to the next.

Invariant: a buffer is handed out again only after ``release`` took it back, and the caller releases a
payload only once the write that reads it has finished; so a background write never sees its bytes change
and the training loop may update its tensors as soon as ``copy`` returns. What is copied is exactly what
``Tensor.to("cpu", copy=True)`` gives (same values, dtype and shape, detached).

Why: the training loop is blocked only while the state is copied. A fresh 64 MiB allocation costs about
three times the copy itself (the kernel zero-fills every new page on first touch), so the copy goes into the
buffers of the previous save when their dtype and shape match. The pool keeps at most the buffers of the
last released payload (about one state's size in host memory) and is freed with its owner. Buffers for
tensors that live on a GPU are page-locked (pinned), which speeds up the device-to-host copy.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any

from grd_blocks.checkpoint.payload.handlers import loaded_torch

__all__ = ["SnapshotBuffers"]

_Key = tuple[Any, tuple[int, ...], bool]  # (dtype, shape, pinned)


class SnapshotBuffers:
    """Copies plain state (dicts, lists, tuples, tensors, leaves) with tensors in reused host buffers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[_Key, list[Any]] = {}

    def copy(self, value: Any) -> Any:
        """A deep copy of the containers in ``value`` with every tensor copied to host memory."""
        torch = loaded_torch()
        if torch is not None and isinstance(value, torch.Tensor):
            return self._copy_tensor(torch, value)
        if isinstance(value, dict):
            return {key: self.copy(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.copy(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.copy(item) for item in value)
        return value

    def copy_sharded(self, state: Any, owned: list[Any]) -> Any:
        """Like ``copy``, for a DCP state dict: a DTensor keeps its spec with a host copy of its local shard;
        values that are not containers or tensors are deep-copied. Every host tensor made is appended to
        ``owned`` (what to ``release``)."""
        torch = loaded_torch()
        if torch is not None:
            from torch.distributed.tensor import DTensor

            if isinstance(state, DTensor):
                local = self.copy(state.to_local())
                owned.append(local)
                return DTensor(local, state._spec, requires_grad=False)  # type: ignore[no-untyped-call]
            if isinstance(state, torch.Tensor):
                host = self.copy(state)
                owned.append(host)
                return host
        if isinstance(state, Mapping):
            return {key: self.copy_sharded(value, owned) for key, value in state.items()}
        if isinstance(state, list):
            return [self.copy_sharded(value, owned) for value in state]
        if isinstance(state, tuple):
            return tuple(self.copy_sharded(value, owned) for value in state)
        return copy.deepcopy(state)

    def release(self, payload: Any) -> None:
        """Take back the tensors of a payload ``copy`` returned; its write must have finished."""
        free: dict[_Key, list[Any]] = {}
        torch = loaded_torch()
        if torch is not None:
            for tensor in _tensors(torch, payload):
                if _poolable(torch, tensor):
                    free.setdefault(_key(tensor, tensor.is_pinned()), []).append(tensor)
        with self._lock:
            self._free = free

    @property
    def pooled_bytes(self) -> int:
        """Host memory held for the next save."""
        with self._lock:
            return sum(t.numel() * t.element_size() for buffers in self._free.values() for t in buffers)

    def _copy_tensor(self, torch: Any, tensor: Any) -> Any:
        source = tensor.detach()
        if not _poolable(torch, source) or source.device.type not in ("cpu", "cuda"):
            return source.to("cpu", copy=True)
        pinned = source.device.type == "cuda"
        buffer = self._take(_key(source, pinned))
        if buffer is None:
            buffer = torch.empty(source.shape, dtype=source.dtype, pin_memory=pinned)
        buffer.copy_(source)
        return buffer

    def _take(self, key: _Key) -> Any:
        with self._lock:
            buffers = self._free.get(key)
            return buffers.pop() if buffers else None


def _key(tensor: Any, pinned: bool) -> _Key:
    return (tensor.dtype, tuple(tensor.shape), pinned)


def _poolable(torch: Any, tensor: Any) -> bool:
    """Dense, contiguous, not quantized: a plain ``torch.empty`` buffer can hold it."""
    return bool(tensor.layout == torch.strided and tensor.is_contiguous() and not tensor.is_quantized)


def _tensors(torch: Any, value: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return [value] if value.device.type == "cpu" else []
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in _tensors(torch, item)]
    if isinstance(value, list | tuple):
        return [tensor for item in value for tensor in _tensors(torch, item)]
    return []
