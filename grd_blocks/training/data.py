"""Deterministic data order that a resumed run can re-enter mid-epoch without drawing extra random numbers.

Invariants:

* Epoch ``e``'s order is ``torch.randperm`` under a private generator seeded from ``(seed, e)`` only: it does
  not depend on the global RNG, on earlier epochs, or on how many batches were already consumed.
* ``EpochBatchSampler(..., skip_batches=k)`` yields exactly batches ``k, k+1, ...`` of that order, so
  "ran k batches, stopped, resumed with skip k" sees the same batches as an uninterrupted epoch.
* With ``rank``/``world_size`` each rank takes every ``world_size``-th index of the order and every rank gets
  the same number of batches (the tail that does not divide evenly is dropped).
* ``seeded_loader`` gives the DataLoader its own generator (seeded from ``(seed, e)``) so creating its
  iterator never touches the global torch RNG, and seeds each worker's torch/numpy/random from
  ``(seed, e, worker_id)``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset, get_worker_info

logger = logging.getLogger("grd.training")

_MIX = 1_000_003


def epoch_seed(seed: int, epoch: int, worker: int = -1) -> int:
    """A 63-bit seed derived from (seed, epoch, worker) only."""
    value = (seed * _MIX + epoch) * _MIX + (worker + 1)
    return value % (2**63 - 1)


def make_deterministic(seed: int, *, threads: int | None = None, algorithms: bool | None = None) -> int:
    """Seed torch/numpy/random and, where it matters, use deterministic algorithms; returns torch's
    intra-op thread count.

    The CPU kernels a training loop uses are deterministic for a fixed thread count, so the thread count is
    left as it is (your numbers stay those of your earlier runs) unless ``threads`` asks for another one; a
    change is logged, and so is the count kept. A resumed run must use the same count as the run it resumes.
    ``algorithms=None`` turns ``torch.use_deterministic_algorithms`` on only when CUDA is available: the
    switch imports torch's compiler stack (seconds of start-up per process) and changes nothing on CPU.
    """
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
        logger.info("make_deterministic: torch threads set from %d to %d", before, threads)
    else:
        logger.info("make_deterministic: torch threads kept at %d (results are reproducible for it)", before)
    if algorithms is None:
        algorithms = torch.cuda.is_available()
    if algorithms:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return torch.get_num_threads()


def synthetic_regression(samples: int, features: int, *, seed: int, noise: float = 0.1) -> TensorDataset:
    """A fixed regression task ``y = x @ w + noise`` built from ``seed`` alone (no global RNG)."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, -7))
    x = torch.randn(samples, features, generator=gen)
    w = torch.randn(features, 1, generator=gen)
    y = x @ w + noise * torch.randn(samples, 1, generator=gen)
    return TensorDataset(x, y)


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of epoch ``epoch``'s permutation for one rank, starting at batch ``skip_batches``."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        skip_batches: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size, self.batch_size = size, batch_size
        self.seed, self.epoch, self.skip_batches = seed, epoch, skip_batches
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, batches_per_epoch(self.size, self.batch_size, self.world_size) - self.skip_batches)

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=gen).tolist()
        per_rank = order[self.rank :: self.world_size]
        total = batches_per_epoch(self.size, self.batch_size, self.world_size)
        for b in range(self.skip_batches, total):
            yield per_rank[b * self.batch_size : (b + 1) * self.batch_size]


def batches_per_epoch(size: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches each rank gets per epoch (the ragged tail is dropped so every rank takes equal steps)."""
    return (size // world_size) // batch_size


def _worker_init(seed: int, epoch: int) -> _WorkerInit:
    return _WorkerInit(seed, epoch)


def _forget_inherited_thread_exit_hooks() -> None:
    """Drop the thread-exit hooks a forked DataLoader worker inherited from its parent.

    Prefect (3.8.x) registers one for each of its background services (events, logs) once a flow has run in
    the process; after a fork they run against the services' reset state and raise, so every worker forked
    from a process that ran a flow exits with code 1 and the DataLoader fails ("worker exited unexpectedly").
    A worker owns no Prefect service, so nothing of the parent's needs draining at its exit.
    """
    hooks = getattr(threading, "_threading_atexits", None)
    if isinstance(hooks, list):
        hooks.clear()


class _WorkerInit:
    """Picklable ``worker_init_fn``: seeds a worker's torch/numpy/random from (seed, epoch, worker_id)."""

    def __init__(self, seed: int, epoch: int) -> None:
        self.seed, self.epoch = seed, epoch

    def __call__(self, worker_id: int) -> None:
        _forget_inherited_thread_exit_hooks()
        value = epoch_seed(self.seed, self.epoch, worker_id)
        torch.manual_seed(value)
        np.random.seed(value % 2**32)
        random.seed(value)
        info = get_worker_info()
        if info is not None and hasattr(info.dataset, "set_epoch"):
            info.dataset.set_epoch(self.epoch)


def seeded_loader(
    dataset: Dataset[tuple[torch.Tensor, ...]],
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    skip_batches: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """The DataLoader for epoch ``epoch`` (batches ``skip_batches..``); build a new one each epoch."""
    size = len(dataset)  # type: ignore[arg-type]
    sampler = EpochBatchSampler(
        size, batch_size, seed=seed, epoch=epoch, skip_batches=skip_batches, rank=rank, world_size=world_size
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, -2)),
        worker_init_fn=_worker_init(seed, epoch) if num_workers > 0 else None,
    )
