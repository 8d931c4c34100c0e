"""Value types handed to callers: ``CheckpointRef`` (one committed checkpoint) and ``ResumeHints``.

Invariant: both are immutable snapshots built from a verified manifest; holding one never keeps a file open
or a connection alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grd_blocks.checkpoint.payload.manifest import Unit


def format_size(size_bytes: int) -> str:
    """``5300`` -> ``"5.2 KiB"``."""
    size = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")



@dataclass(frozen=True)
class CheckpointRef:
    """One committed checkpoint ``{url}`` = ``{run url}/{unit}_{index}``."""

    run_key: str
    unit: Unit
    index: int
    url: str
    created_at: str
    metrics: dict[str, float] = field(default_factory=dict)
    size_bytes: int = 0
    writer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    epoch: int | None = None
    handlers: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The checkpoint's directory name, e.g. ``step_3``."""
        return f"{self.unit}_{self.index}"

    @property
    def order(self) -> tuple[int, str]:
        """Sort key: newest is largest (index first; created_at breaks ties between units)."""
        return (self.index, self.created_at)


@dataclass(frozen=True)
class ResumeHints:
    """Where a retried or resumed run should continue from."""

    has_checkpoint: bool
    unit: str | None = None
    latest_index: int | None = None
    epoch: int | None = None
    step: int | None = None
    url: str | None = None
    remaining: int | None = None
