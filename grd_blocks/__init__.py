"""grd: nested budgets that really stop work, crash-consistent checkpoints, and retries that resume.

The public API is exactly ``__all__``; ``tests/test_public_api.py`` keeps it honest.
"""

from __future__ import annotations

from grd_blocks.errors import (
    BudgetError,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointNotFound,
    ConfigError,
    DurationError,
    GrdError,
    InvalidRunKey,
    ProcessError,
    SpecError,
    StaleWriter,
    StoreUnavailable,
    UnsafeCheckpoint,
    UsageError,
)

__all__ = [
    "BudgetError",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointNotFound",
    "ConfigError",
    "DurationError",
    "GrdError",
    "InvalidRunKey",
    "ProcessError",
    "SpecError",
    "StaleWriter",
    "StoreUnavailable",
    "UnsafeCheckpoint",
    "UsageError",
]
