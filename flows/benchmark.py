"""Deployment entrypoint (prefect.yaml: ``flows/benchmark.py:benchmark``): the benchmark flow, defined at
grd's Prefect edge (grd_blocks/prefect_edge/benchmark_flow.py)."""

from __future__ import annotations

from grd_blocks.prefect_edge.benchmark_flow import benchmark

__all__ = ["benchmark"]
