"""Run identity: the key under which a run's progress and checkpoints live.

Invariant (docs/design.md): run key = the explicit run key, else the run being resumed, else the Prefect flow
run id, which stays the same across a flow run's retries, so a retry resumes. A key is
``[A-Za-z0-9_.-]{1,128}``, not ``.`` or ``..``: the store's own rule (``checkpoint.layout``), checked once
here, before any work starts.
"""

from __future__ import annotations

from grd_blocks.checkpoint.storage.layout import validate_run_key  # the one copy of the rule: the store's
from grd_blocks.errors import UsageError

__all__ = ["resolve_run_key", "validate_run_key"]


def resolve_run_key(run_key: str | None, resume_from: str | None, flow_run_id: str | None) -> str:
    """The run key of a run: ``run_key``, else ``resume_from``, else ``flow_run_id``."""
    if run_key and resume_from and run_key != resume_from:
        raise UsageError(
            f"run key {run_key!r} and resume_from {resume_from!r} differ: resuming continues that run "
            "under its own key; pass only one of them (or the same key twice)"
        )
    chosen = run_key or resume_from or flow_run_id
    if not chosen:
        raise UsageError("no run key: pass run_key or resume_from, or run inside a Prefect flow run")
    return validate_run_key(chosen)
