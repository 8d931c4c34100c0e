"""Prefect Blocks of grd (configuration that delegates to the plain library objects)."""

from __future__ import annotations

from grd_blocks.blocks.checkpoint_store import CheckpointStore, resolve_store

__all__ = ["CheckpointStore", "resolve_store"]
