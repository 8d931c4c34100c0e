"""Retention: which committed checkpoints may be deleted after a newer one is committed.

Invariant: never deletes the newest checkpoint, the one LATEST.json points at, any checkpoint newer than that
(with concurrent writers, its writer may be about to point LATEST at it), or any of the ``keep_best`` best by
the monitored metric; with ``keep_last=None`` nothing is deleted at all. Only checkpoints older than the
newest committed one are ever candidates, so deletion always follows a newer commit. Because LATEST.json
never moves backwards (run.py), a checkpoint older than the pointer read before the listing is never one that
LATEST points at then or later, whatever other writers do meanwhile.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from grd_blocks.checkpoint.refs import CheckpointRef
from grd_blocks.errors import ConfigError

Mode = Literal["min", "max"]


@dataclass(frozen=True)
class RetentionPolicy:
    """``keep_last`` newest plus ``keep_best`` best by ``monitor`` (``mode`` min or max); None keeps all."""

    keep_last: int | None = None
    keep_best: int = 0
    monitor: str | None = None
    mode: Mode = "min"

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 1:
            raise ConfigError(
                f"keep_last={self.keep_last} is invalid: keep at least 1 checkpoint, or None to keep all"
            )
        if self.keep_best < 0:
            raise ConfigError(f"keep_best={self.keep_best} is invalid: use 0 or more")
        if self.keep_best and not self.monitor:
            raise ConfigError(
                f"keep_best={self.keep_best} needs monitor=<metric name> "
                "(e.g. 'val_loss') to rank checkpoints"
            )
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode={self.mode!r} is invalid: use 'min' or 'max'")

    @property
    def active(self) -> bool:
        return self.keep_last is not None


def best(refs: Sequence[CheckpointRef], policy: RetentionPolicy) -> list[CheckpointRef]:
    """The ``keep_best`` best checkpoints by the monitored metric (those without it are never best)."""
    if not policy.keep_best or policy.monitor is None:
        return []
    monitor = policy.monitor
    scored = [ref for ref in refs if isinstance(ref.metrics.get(monitor), int | float)]
    sign = 1.0 if policy.mode == "min" else -1.0
    scored.sort(key=lambda ref: (sign * float(ref.metrics[monitor]), -ref.index))  # ties: the newer one
    return scored[: policy.keep_best]


def select_deletions(
    refs: Sequence[CheckpointRef],
    policy: RetentionPolicy,
    *,
    protected: Collection[str] = (),
    latest_index: int | None = None,
) -> list[CheckpointRef]:
    """Checkpoints to delete from ``refs`` (any order); ``protected`` holds names like ``step_3`` to keep,
    and nothing with an index of ``latest_index`` (LATEST.json's) or more is deleted."""
    if not policy.active or not refs:
        return []
    ordered = sorted(refs, key=lambda ref: ref.order)
    assert policy.keep_last is not None
    keep = {ref.name for ref in ordered[-policy.keep_last :]}
    keep |= {ref.name for ref in best(ordered, policy)}
    keep |= set(protected)
    keep.add(ordered[-1].name)
    return [
        ref
        for ref in ordered
        if ref.name not in keep and (latest_index is None or ref.index < latest_index)
    ]
