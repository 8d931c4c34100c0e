"""A flow that asks for long-run approval, deployed by the e2e tests (tests/e2e/prefect-e2e.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from grd_blocks.prefect_edge.approval import require_approval


@flow(name="grd-approval-probe")
def approval_probe(
    run_key: str, store: str, estimate_s: float, default_budget_s: float, result_path: str
) -> None:
    """Ask for approval as a long run would, then write what was granted to ``result_path``."""
    approval = require_approval(run_key, estimate_s, default_budget_s, store=store, timeout_s=300,
                                poll_interval_s=1)
    result = {"limit_s": approval.limit_s, "who": approval.who, "reason": approval.reason,
              "asked": approval.asked, "reused": approval.reused}
    Path(result_path).write_text(json.dumps(result))
