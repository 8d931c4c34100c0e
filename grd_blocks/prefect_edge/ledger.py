"""Opening the approval ledger of a run key in a store named the way users name stores (budget/ledger.py holds
the ledger itself).

Invariant: the ledger of ``run_key`` lives at ``{store}/{run_key}/approval``, however the store is named.
"""

from __future__ import annotations

from typing import Any

from grd_blocks.budget.ledger import LEDGER_PREFIX, ApprovalLedger
from grd_blocks.errors import ConfigError

__all__ = ["open_ledger"]


def open_ledger(store: object, run_key: str) -> ApprovalLedger:
    """The ledger of ``run_key`` in ``store``: an ``ApprovalLedger`` (returned as is), a ``CheckpointEngine``,
    a ``CheckpointStore`` block, or a block name / URL / None (resolved like ``grd run --store``)."""
    if isinstance(store, ApprovalLedger):
        return store
    from grd_blocks.checkpoint import CheckpointEngine

    engine: Any
    if isinstance(store, CheckpointEngine):
        engine = store
    elif store is None or isinstance(store, str):
        from grd_blocks.prefect_edge.block import resolve_store

        engine = resolve_store(store).engine()
    elif callable(getattr(store, "engine", None)):
        engine = store.engine()  # type: ignore[attr-defined]
    else:
        raise ConfigError(
            f"approval store {store!r} is not a CheckpointStore, CheckpointEngine, block name or URL; "
            "pass one of those (e.g. store='./checkpoints')"
        )
    return ApprovalLedger(engine.run(run_key).child(LEDGER_PREFIX), run_key)
