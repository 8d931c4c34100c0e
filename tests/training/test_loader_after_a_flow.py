"""A seeded DataLoader with worker processes still works in a process where a Prefect flow has run.

Prefect registers thread-exit hooks for its background services once a flow has run; forked DataLoader workers
inherit them and, without grd's worker init, exit with code 1 ("DataLoader worker exited unexpectedly").
"""

from __future__ import annotations

import torch
from prefect import flow

from grd_blocks.training.data import seeded_loader, synthetic_regression


@flow(name="grd-test-noop")
def _noop() -> int:
    return 1


def test_seeded_loader_workers_survive_a_flow_run_in_the_same_process(prefect_api: None) -> None:
    assert _noop() == 1
    dataset = synthetic_regression(64, 4, seed=3)
    loader = seeded_loader(dataset, batch_size=8, seed=3, epoch=1, num_workers=2)
    with_workers = [x.clone() for x, _ in loader]
    in_process = [x.clone() for x, _ in seeded_loader(dataset, batch_size=8, seed=3, epoch=1, num_workers=0)]
    assert len(with_workers) == 8
    assert all(torch.equal(a, b) for a, b in zip(with_workers, in_process, strict=True))
