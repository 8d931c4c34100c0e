"""Prefect artifacts grd publishes at its edge: artifact keys, the approval audit table and the helpers the
training artifacts (checkpoint index, progress; see checkpoint_index.py) are published with.

Invariant: every key grd gives Prefect matches Prefect's rule (lowercase letters, digits and dashes) and
maps one run key to one artifact key: a run key that had to change to fit (upper case, ``_``, ``.``) gets a
short hash of the original appended, so ``run_a`` and ``run.a`` never share an artifact. Publishing never
fails a run: outside a flow run or on an API error it is skipped and logged.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence

from grd_blocks.budget.ledger import ApprovalRecord

__all__ = [
    "approval_artifact_key",
    "artifact_key",
    "checkpoint_index_key",
    "in_prefect_run",
    "progress_artifact_key",
    "publish_approval_audit",
    "render_audit",
    "results_artifact_key",
]

logger = logging.getLogger(__name__)
_NOT_ALLOWED = re.compile(r"[^a-z0-9-]+")
_MAX_KEY = 120


def artifact_key(prefix: str, name: str) -> str:
    """``{prefix}-{name}`` made a valid Prefect artifact key (see the module invariant)."""
    raw = f"{prefix}-{name}"
    cleaned = _NOT_ALLOWED.sub("-", raw.lower()).strip("-")
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    if cleaned != raw or len(cleaned) > _MAX_KEY:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        cleaned = f"{cleaned[: _MAX_KEY - 9].rstrip('-')}-{digest}"
    return cleaned


def approval_artifact_key(run_key: str) -> str:
    """The audit artifact key of ``run_key``: ``grd-approval-<run key, sanitised>``."""
    return artifact_key("grd-approval", run_key)


def checkpoint_index_key(run_key: str) -> str:
    """The checkpoint index artifact key of ``run_key``: ``grd-checkpoints-<run key, sanitised>``."""
    return artifact_key("grd-checkpoints", run_key)


def progress_artifact_key(run_key: str) -> str:
    """The training progress artifact key of ``run_key``: ``grd-progress-<run key, sanitised>``."""
    return artifact_key("grd-progress", run_key)


def results_artifact_key(benchmark: str) -> str:
    """The results table artifact key of benchmark ``benchmark``: ``grd-<name, sanitised>``."""
    return artifact_key("grd", benchmark)


def in_prefect_run() -> bool:
    """True inside a flow or task run (artifacts belong to a run; outside one grd publishes none)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "-"


def render_audit(run_key: str, records: Sequence[ApprovalRecord], *, default_budget_s: float | None) -> str:
    """The audit as markdown: a header naming the run key and budget, then one table row per record."""
    lines = [
        f"# Long-run approval: `{run_key}`",
        "",
        f"Default budget: {_minutes(default_budget_s)}. A run estimated above it waits for a decision; the "
        "decision holds for this run key and all its retries.",
        "",
        "| when (UTC) | what | who | estimate | limit | reason | flow run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r.at} | {r.kind} | {_cell(r.who)} | {_minutes(r.estimate_s)} | {_minutes(r.limit_s)} "
            f"| {_cell(r.reason)} | {_cell(r.flow_run_id or '')} |"
        )
    return "\n".join(lines) + "\n"


def publish_approval_audit(
    run_key: str, records: Sequence[ApprovalRecord], *, default_budget_s: float | None
) -> str | None:
    """Publish the audit as a markdown artifact keyed ``approval_artifact_key(run_key)``; returns the key,
    or None outside a flow/task run or when it could not be published (logged, never raised)."""
    from prefect.artifacts import create_markdown_artifact

    key = approval_artifact_key(run_key)
    if not in_prefect_run():
        return None  # artifacts belong to a run; outside one the store ledger alone keeps the audit
    try:
        create_markdown_artifact(
            markdown=render_audit(run_key, records, default_budget_s=default_budget_s),
            key=key,
            description=f"grd approval requests and decisions for run key {run_key}",
        )
    except Exception as exc:  # an audit artifact must not fail the run; the ledger in the store still has it
        logger.warning("could not publish approval artifact %s (%s); the store ledger keeps the audit",
                       key, exc)
        return None
    return key
