"""Crash-consistent checkpoints over fsspec (local disk, memory, S3): the library side, no Prefect.

Layout ``{url}/{run_key}/{unit}_{N}/`` (payload + MANIFEST.json written last) and
``{url}/{run_key}/LATEST.json``;
see run.py for the guarantees and commit.py for the commit protocol.
"""

from __future__ import annotations

from grd_blocks.checkpoint.engine import CheckpointEngine
from grd_blocks.checkpoint.refs import CheckpointRef, ResumeHints
from grd_blocks.checkpoint.rng import capture_rng_state, restore_rng_state
from grd_blocks.checkpoint.run import RunCheckpoints

__all__ = [
    "CheckpointEngine",
    "CheckpointRef",
    "ResumeHints",
    "RunCheckpoints",
    "capture_rng_state",
    "restore_rng_state",
]
