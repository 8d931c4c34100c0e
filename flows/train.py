"""Deployment entrypoint (prefect.yaml: ``flows/train.py:train``): the training flow, defined at grd's Prefect
edge (grd_blocks/prefect_edge/train_flow.py)."""

from __future__ import annotations

from grd_blocks.prefect_edge.train_flow import train

__all__ = ["train"]
