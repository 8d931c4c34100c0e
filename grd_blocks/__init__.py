"""grd: nested budgets that really stop work, crash-consistent checkpoints, and retries that resume.

The public API is exactly ``__all__``; ``tests/test_public_api.py`` keeps it honest.

Invariant: ``import grd_blocks`` is cheap. Prefect imports this package at start-up (it is registered as a
Prefect collection) and the ``grd`` CLI imports it first, so nothing heavy (torch, prefect, fsspec) is
imported here: every public name resolves lazily, on first access, from the module named in ``_LAZY``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from grd_blocks.errors import (
    ApprovalExpired,
    ApprovalRejected,
    BenchmarkIncomplete,
    BudgetError,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointNotFound,
    CheckpointTooNew,
    ConfigError,
    DispatchError,
    DurationError,
    GrdError,
    InvalidRunKey,
    PreflightError,
    ProcessError,
    SpecError,
    StaleWriter,
    StoreUnavailable,
    TrainingInterrupted,
    TrainingTimedOut,
    UnsafeCheckpoint,
    UsageError,
)

if TYPE_CHECKING:
    from grd_blocks.budget import Budget, Clock, FakeClock, format_duration, parse_duration
    from grd_blocks.checkpoint import (
        CheckpointEngine,
        CheckpointRef,
        ResumeHints,
        RunCheckpoints,
        capture_rng_state,
        restore_rng_state,
    )
    from grd_blocks.orchestration.status import Status
    from grd_blocks.prefect_edge import EVENT_NAMES, emit_grd_event
    from grd_blocks.prefect_edge.approval import Approval, ApprovalInput, approve_flow_run, require_approval
    from grd_blocks.prefect_edge.block import CheckpointStore, resolve_store
    from grd_blocks.process import CommandOutcome, run_command
    from grd_blocks.report import BenchmarkReport, CommandReport, PhaseReport, TimeoutInfo
    from grd_blocks.spec import (
        BenchmarkSpec,
        CommandSpec,
        Defaults,
        OnTimeout,
        PhaseSpec,
        ResolvedCommand,
        load_spec,
        parse_spec,
        resolve_command,
    )
    from grd_blocks.training import (
        GracefulShutdown,
        Pacer,
        Position,
        ResumableTraining,
        TrainConfig,
        make_deterministic,
        seeded_loader,
    )

_LAZY: dict[str, str] = {
    **dict.fromkeys(["Approval", "ApprovalInput", "approve_flow_run", "require_approval"],
                    "grd_blocks.prefect_edge.approval"),
    **dict.fromkeys(["CheckpointStore", "resolve_store"], "grd_blocks.prefect_edge.block"),
    **dict.fromkeys(
        ["Budget", "Clock", "FakeClock", "format_duration", "parse_duration"], "grd_blocks.budget"
    ),
    **dict.fromkeys(
        [
            "CheckpointEngine",
            "CheckpointRef",
            "ResumeHints",
            "RunCheckpoints",
            "capture_rng_state",
            "restore_rng_state",
        ],
        "grd_blocks.checkpoint",
    ),
    "Status": "grd_blocks.orchestration.status",
    **dict.fromkeys(["EVENT_NAMES", "emit_grd_event"], "grd_blocks.prefect_edge"),
    **dict.fromkeys(["CommandOutcome", "run_command"], "grd_blocks.process"),
    **dict.fromkeys(["BenchmarkReport", "CommandReport", "PhaseReport", "TimeoutInfo"], "grd_blocks.report"),
    **dict.fromkeys(
        [
            "BenchmarkSpec",
            "CommandSpec",
            "Defaults",
            "OnTimeout",
            "PhaseSpec",
            "ResolvedCommand",
            "load_spec",
            "parse_spec",
            "resolve_command",
        ],
        "grd_blocks.spec",
    ),
    **dict.fromkeys(
        [
            "GracefulShutdown",
            "Pacer",
            "Position",
            "ResumableTraining",
            "TrainConfig",
            "make_deterministic",
            "seeded_loader",
        ],
        "grd_blocks.training",
    ),
}

__all__ = [
    "EVENT_NAMES",
    "Approval",
    "ApprovalExpired",
    "ApprovalInput",
    "ApprovalRejected",
    "BenchmarkIncomplete",
    "BenchmarkReport",
    "BenchmarkSpec",
    "Budget",
    "BudgetError",
    "CheckpointCorrupt",
    "CheckpointEngine",
    "CheckpointError",
    "CheckpointNotFound",
    "CheckpointRef",
    "CheckpointStore",
    "CheckpointTooNew",
    "Clock",
    "CommandOutcome",
    "CommandReport",
    "CommandSpec",
    "ConfigError",
    "Defaults",
    "DispatchError",
    "DurationError",
    "FakeClock",
    "GracefulShutdown",
    "GrdError",
    "InvalidRunKey",
    "OnTimeout",
    "Pacer",
    "PhaseReport",
    "PhaseSpec",
    "Position",
    "PreflightError",
    "ProcessError",
    "ResolvedCommand",
    "ResumableTraining",
    "ResumeHints",
    "RunCheckpoints",
    "SpecError",
    "StaleWriter",
    "Status",
    "StoreUnavailable",
    "TimeoutInfo",
    "TrainConfig",
    "TrainingInterrupted",
    "TrainingTimedOut",
    "UnsafeCheckpoint",
    "UsageError",
    "approve_flow_run",
    "capture_rng_state",
    "emit_grd_event",
    "format_duration",
    "load_spec",
    "make_deterministic",
    "parse_duration",
    "parse_spec",
    "require_approval",
    "resolve_command",
    "resolve_store",
    "restore_rng_state",
    "run_command",
    "seeded_loader",
]


def __getattr__(name: str) -> Any:
    """Resolve a public name on first use (PEP 562), so importing grd_blocks stays cheap."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'grd_blocks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Every public name, so that ``prefect block register -m grd_blocks`` finds the blocks."""
    return sorted(set(globals()) | set(__all__))
