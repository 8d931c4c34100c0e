"""The library logic the benchmark flows compose: budgets, gates, statuses, command environment, progress.

Invariant: nothing here imports Prefect or anything above it (grd_blocks/prefect_edge, the CLI). Import
submodules directly (``from grd_blocks.orchestration.run import BenchmarkRun``); this package itself exports
only the statuses, so that ``grd_blocks.report`` and the orchestration modules can import each other freely.
"""

from __future__ import annotations

from grd_blocks.orchestration.status import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Status,
    exit_code,
    rollup,
)

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE", "Status", "exit_code", "rollup"]
