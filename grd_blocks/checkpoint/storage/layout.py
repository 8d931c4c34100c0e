"""Where things live in a checkpoint store, and which names are allowed.

Invariant: every path the store touches is built here from a validated run key and a ``{unit}_{N}`` directory
name; nothing outside ``{root}/{run_key}/`` is ever written, and a run key matches ``[A-Za-z0-9_.-]{1,128}``
and is not ``.`` or ``..``, so it can never climb out of the store or nest unexpectedly.

Layout::

    {url}/{run_key}/{unit}_{N}/        payload files (state.pt or state.json) + MANIFEST.json (written last)
    {url}/{run_key}/LATEST.json        points at the newest committed checkpoint; written after its manifest
"""

from __future__ import annotations

import re
from typing import Final

from grd_blocks.checkpoint.payload.manifest import UNITS, Unit
from grd_blocks.errors import InvalidRunKey

__all__ = ["LATEST_NAME", "LOCK_NAME", "MANIFEST_NAME", "OLD_PREFIX", "OPENED_NAME", "TMP_PREFIX", "UNITS",
           "Unit", "basename", "checkpoint_dirname", "join", "parse_dirname", "validate_run_key"]
MANIFEST_NAME: Final = "MANIFEST.json"
LATEST_NAME: Final = "LATEST.json"
OPENED_NAME: Final = ".opened"
"""An empty marker a command leaves in its prefix when it opens the prefix grd gave it (run.py)."""
TMP_PREFIX: Final = ".tmp-"
"""Prefix of a local commit's staging directory / file (inside the run directory, never elsewhere)."""
LOCK_NAME: Final = ".LATEST.lock"
"""Lock file beside LATEST.json where a filesystem cannot lock the run directory itself (commit.py)."""
OLD_PREFIX: Final = ".old-"
"""Prefix of a checkpoint directory being replaced by a retry of the same N (local disk)."""

_RUN_KEY_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_DIR_RE: Final = re.compile(r"(epoch|step)_(0|[1-9][0-9]*)")


def validate_run_key(run_key: object) -> str:
    """Return ``run_key`` unchanged if it is a valid run key, else raise ``InvalidRunKey`` naming it."""
    if not isinstance(run_key, str) or run_key in (".", "..") or not _RUN_KEY_RE.fullmatch(run_key):
        raise InvalidRunKey(run_key)
    return run_key


def checkpoint_dirname(unit: Unit, index: int) -> str:
    """``("step", 3)`` -> ``"step_3"``."""
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is invalid: use one of {UNITS}")
    if index < 0:
        raise ValueError(f"checkpoint index {index} is invalid: use a step or epoch number >= 0")
    return f"{unit}_{index}"


def parse_dirname(name: str) -> tuple[Unit, int] | None:
    """``"step_3"`` -> ``("step", 3)``; anything else (temp dirs, ``commands``, LATEST.json) -> None."""
    match = _DIR_RE.fullmatch(name)
    if match is None:
        return None
    unit: Unit = "epoch" if match.group(1) == "epoch" else "step"
    return unit, int(match.group(2))


def join(base: str, *parts: str) -> str:
    """Join path segments with ``/`` (fsspec paths and URLs use ``/`` on every backend)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def basename(path: str) -> str:
    """Last ``/``-separated segment of a path."""
    return path.rstrip("/").rsplit("/", 1)[-1]
