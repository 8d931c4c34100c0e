"""Crash-consistent checkpoints over fsspec (local disk, memory, S3): the library side, no Prefect.

Layout ``{url}/{run_key}/{unit}_{N}/`` (payload + MANIFEST.json written last) and
``{url}/{run_key}/LATEST.json``. Three layers, each importing only the ones below it: ``payload/`` (what a
checkpoint is: its bytes and their proof), ``storage/`` (where they go: layout, filesystems, the commit
protocol in storage/commit.py, the LATEST pointer), and the run handle here (run.py states the guarantees;
engine.py roots runs at a store URL).
"""

from __future__ import annotations

from grd_blocks.checkpoint.engine import CheckpointEngine
from grd_blocks.checkpoint.payload.rng import capture_rng_state, restore_rng_state
from grd_blocks.checkpoint.refs import CheckpointRef, ResumeHints
from grd_blocks.checkpoint.run import RunCheckpoints

__all__ = [
    "CheckpointEngine",
    "CheckpointRef",
    "ResumeHints",
    "RunCheckpoints",
    "capture_rng_state",
    "restore_rng_state",
]
