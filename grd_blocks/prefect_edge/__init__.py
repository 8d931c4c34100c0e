"""Prefect-specific helpers at the library's edge: the approval ledger and its audit artifact, and grd events.

Nothing in the core (budgets, process runner, checkpoint commit protocol) imports this package.
"""

from __future__ import annotations

from grd_blocks.budget.ledger import ApprovalLedger, ApprovalRecord
from grd_blocks.prefect_edge.artifacts import approval_artifact_key, artifact_key, publish_approval_audit
from grd_blocks.prefect_edge.events import (
    EVENT_NAMES,
    checkpoint_committed,
    command_failed,
    command_timed_out,
    emit_grd_event,
    phase_completed,
    run_resource_id,
    run_resumed,
)
from grd_blocks.prefect_edge.ledger import open_ledger

__all__ = [
    "EVENT_NAMES",
    "ApprovalLedger",
    "ApprovalRecord",
    "approval_artifact_key",
    "artifact_key",
    "checkpoint_committed",
    "command_failed",
    "command_timed_out",
    "emit_grd_event",
    "open_ledger",
    "phase_completed",
    "publish_approval_audit",
    "run_resource_id",
    "run_resumed",
]
