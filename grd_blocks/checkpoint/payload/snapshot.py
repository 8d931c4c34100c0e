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

A real model's state is hundreds to thousands of tensors, so a copy first walks the whole state, taking a
buffer for each tensor, and then copies every host tensor in one ``torch._foreach_copy_`` call (split in two
halves of about the same bytes, one on a helper thread, when torch may use two threads): one call releases
the GIL once, where a copy per tensor released it and took it back per tensor, each time waiting for a
background write's Python to give it up (README, Checkpoint benchmarks: the model-shaped rows).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from grd_blocks.checkpoint.payload.handlers import loaded_torch

__all__ = ["SnapshotBuffers"]

_Key = tuple[Any, tuple[int, ...], bool]  # (dtype, shape, pinned)


_SPLIT_BYTES = 4 * 2**20  # below this a copy runs on the caller's thread alone


class SnapshotBuffers:
    """Copies plain state (dicts, lists, tuples, tensors, leaves) with tensors in reused host buffers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[_Key, list[Any]] = {}
        self._helper: tuple[int, ThreadPoolExecutor] | None = None  # (the process it was made in, it)

    def copy(self, value: Any, owned: list[Any] | None = None) -> Any:
        """A deep copy of the containers in ``value`` with every tensor copied to host memory; every host
        tensor made is appended to ``owned`` (what to ``release``), when given."""
        return self._stage(value, owned, sharded=False)

    def copy_sharded(self, state: Any, owned: list[Any]) -> Any:
        """Like ``copy``, for a DCP state dict: a DTensor keeps its spec with a host copy of its local shard;
        values that are not containers or tensors are deep-copied. Every host tensor made is appended to
        ``owned`` (what to ``release``)."""
        return self._stage(state, owned, sharded=True)

    def release(self, payload: Any) -> None:
        """Take back the tensors of a payload ``copy`` returned (or the ``owned`` list it filled); its write
        must have finished."""
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

    def _stage(self, value: Any, owned: list[Any] | None, *, sharded: bool) -> Any:
        torch = loaded_torch()
        with self._lock:  # the walk takes buffers from the pool; release() replaces the pool meanwhile
            staging = _Staging(torch, self._free, sharded=sharded)
            copied = staging.walk(value)
        if torch is not None:
            self._copy_all(torch, staging)
        if owned is not None:
            owned.extend(staging.made)
        return copied

    def _copy_all(self, torch: Any, staging: _Staging) -> None:
        for target, source in staging.device_pairs:  # from a GPU, into pinned buffers: one copy each
            target.copy_(source.detach())
        targets, sources = staging.targets, staging.sources
        split = staging.nbytes >= _SPLIT_BYTES and torch.get_num_threads() > 1
        half = _half(sources, staging.nbytes) if split else len(sources)
        if 0 < half < len(sources):  # the second half on the helper thread, the first on this one
            other = self._helping().submit(_copy_many, torch, targets[half:], sources[half:])
            _copy_many(torch, targets[:half], sources[:half])
            other.result()
        elif targets:
            _copy_many(torch, targets, sources)

    def _helping(self) -> ThreadPoolExecutor:
        """The helper thread's executor, made by the first copy that needs it, in the loop's thread (so its
        thread has the loop's priority, not the writer's), and made again in a forked child (where the
        parent's thread does not exist)."""
        if self._helper is None or self._helper[0] != os.getpid():
            self._helper = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="grd-snapshot"))
        return self._helper[1]


class _Staging:
    """One copy's walk: the copied containers, and a host buffer for each tensor (taken from ``free`` when
    one matches, else new) with the tensor it is to hold; the bytes themselves are copied after the walk."""

    def __init__(self, torch: Any, free: dict[_Key, list[Any]], *, sharded: bool) -> None:
        self.torch = torch
        self.free = free
        self.sharded = sharded
        self.targets: list[Any] = []
        self.sources: list[Any] = []
        self.nbytes = 0
        self.device_pairs: list[tuple[Any, Any]] = []
        self.made: list[Any] = []
        self.dtensor: Any = None
        if torch is not None and sharded:
            from torch.distributed.tensor import DTensor

            self.dtensor = DTensor

    def walk(self, value: Any) -> Any:
        torch = self.torch
        if torch is not None and isinstance(value, torch.Tensor):
            if self.dtensor is not None and isinstance(value, self.dtensor):
                local = self._host(value.to_local())
                return self.dtensor(local, value._spec, requires_grad=False)
            return self._host(value)
        if isinstance(value, dict) or (self.sharded and isinstance(value, Mapping)):
            return {key: self.walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.walk(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.walk(item) for item in value)
        return copy.deepcopy(value) if self.sharded else value

    def _host(self, tensor: Any) -> Any:
        torch = self.torch
        device = tensor.device.type
        if device not in ("cpu", "cuda") or not _poolable(torch, tensor):
            host = tensor.detach().to("cpu", copy=True)
            self.made.append(host)
            return host
        pinned = device == "cuda"
        buffers = self.free.get(_key(tensor, pinned))
        host = buffers.pop() if buffers else torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pinned)
        self.made.append(host)
        if pinned:
            self.device_pairs.append((host, tensor))
        else:
            self.targets.append(host)
            self.sources.append(tensor)
            self.nbytes += tensor.numel() * tensor.element_size()
        return host


def _half(sources: list[Any], nbytes: int) -> int:
    """How many of ``sources``, from the first, hold at least half of their ``nbytes`` bytes."""
    count, counted = 0, 0
    while counted * 2 < nbytes:
        counted += sources[count].numel() * sources[count].element_size()
        count += 1
    return count


def _copy_many(torch: Any, targets: list[Any], sources: list[Any]) -> None:
    """Copy ``sources`` into ``targets`` (host tensors of the same dtype and shape), in one call, without
    autograd (grad mode is per thread: the copies must stay detached on the helper's thread too)."""
    with torch.no_grad():
        torch._foreach_copy_(targets, sources)


def _key(tensor: Any, pinned: bool) -> _Key:
    return (tensor.dtype, tensor.shape, pinned)  # a torch.Size hashes and compares as the tuple it is


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
