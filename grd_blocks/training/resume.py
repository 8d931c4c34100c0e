"""Where a training run resumes: its checkpoint prefix, and the exact position (epoch, batch) to continue at.

Invariants:

* A position is "what is done": ``epoch`` full epochs plus ``batch`` batches of the next one, ``global_step``
  optimizer steps in all; it is stored in each checkpoint's metadata and the next step to run is
  ``(epoch, batch)`` itself.
* Epoch-boundary checkpoints live at ``{run}/epoch_{N}`` (or ``{run}/step_{N}`` when checkpointing every N
  steps); a stop in the middle of an epoch of an epoch-unit run is saved under ``{run}/partial/step_{N}`` so
  the two units never share one LATEST pointer. Resuming takes whichever committed checkpoint has done the
  most global steps.
* ``resume_from`` is a run key (a name) or a URL: a run prefix (``./ckpts/run_42``) or one checkpoint
  (``./ckpts/run_42/epoch_3``). A run resumes from whichever has done more global steps: its own newest
  checkpoint or ``resume_from`` (so a retry of a fork continues its own progress).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grd_blocks.checkpoint import CheckpointRef, RunCheckpoints
from grd_blocks.errors import ConfigError

PARTIAL = "partial"
_CHECKPOINT_DIR = re.compile(r"(epoch|step)_(0|[1-9][0-9]*)")


@dataclass(frozen=True)
class Position:
    """``epoch`` epochs and ``batch`` batches of the next one done; ``global_step`` steps done in all."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0

    def metadata(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "global_step": self.global_step}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], where: str) -> Position:
        try:
            return cls(int(metadata["epoch"]), int(metadata["batch"]), int(metadata["global_step"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"checkpoint {where} has no training position in its metadata (epoch, batch, global_step); "
                "it was not written by grd_blocks.training: load it yourself or start a new run key"
            ) from None


@dataclass(frozen=True)
class Resumed(Position):
    """What ``ResumableTraining.resume()`` returns: the position to continue at, and the plain ``values``
    (numbers, strings, lists, tuples) as the checkpoint holds them, or as passed in when there is none yet."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.batch, self.global_step)


@dataclass(frozen=True)
class CheckpointUrl:
    """A ``resume_from`` URL split into its run prefix and, if it names one checkpoint, unit and index."""

    run_url: str
    unit: str | None = None
    index: int | None = None

    @property
    def run_key(self) -> str:
        return self.run_url.rstrip("/").rsplit("/", 1)[-1]


def split_checkpoint_url(url: str) -> CheckpointUrl:
    """``./c/r/epoch_3`` -> (``./c/r``, epoch, 3); ``./c/r`` -> (``./c/r``, None, None)."""
    trimmed = url.rstrip("/")
    head, _, tail = trimmed.rpartition("/")
    match = _CHECKPOINT_DIR.fullmatch(tail)
    if match and head:
        if head.endswith("/" + PARTIAL):
            head = head[: -len(PARTIAL) - 1]
            return CheckpointUrl(head, "partial:" + match.group(1), int(match.group(2)))
        return CheckpointUrl(head, match.group(1), int(match.group(2)))
    return CheckpointUrl(trimmed)


def is_url(value: str) -> bool:
    """A path or URL (as opposed to a run key, which never contains '/' or ':')."""
    return "/" in value or ":" in value or value.startswith(("~", "."))


def newest(checkpoints: RunCheckpoints) -> tuple[RunCheckpoints, CheckpointRef] | None:
    """The committed checkpoint of this run that has done the most global steps (main or ``partial/``)."""
    found: list[tuple[int, int, RunCheckpoints, CheckpointRef]] = []
    for order, prefix in enumerate((checkpoints, checkpoints.child(PARTIAL))):
        ref = prefix.latest()
        if ref is not None:
            step = int(ref.metadata.get("global_step", ref.index))
            found.append((step, -order, prefix, ref))
    if not found:
        return None
    _, _, prefix, ref = max(found, key=lambda item: (item[0], item[1]))
    return prefix, ref


def load_position(
    prefix: RunCheckpoints,
    ref: CheckpointRef | None,
    *,
    unit: str | None = None,
    index: int | None = None,
    into: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any] | None, Position, str | None]:
    """Load checkpoint ``unit``/``index`` or the latest valid one; returns its state, position and URL."""
    if unit is not None and index is not None:
        kind = unit.split(":")[-1]
        state = prefix.load(
            step=index if kind == "step" else None, epoch=index if kind == "epoch" else None, into=into
        )
        ref = prefix.find(step=index if kind == "step" else None, epoch=index if kind == "epoch" else None)
    else:
        state = prefix.load(into=into)
        if state is not None:
            ref = prefix.latest()  # load() may have fallen back past a damaged newest one
    if state is None or ref is None:
        return None, Position(), None
    meta = state.get("position")
    position = Position.from_metadata(meta if isinstance(meta, Mapping) else ref.metadata, ref.url)
    return state, position, ref.url
