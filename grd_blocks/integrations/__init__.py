"""Resumable training where users already train: one small module per framework.

``grd_blocks.integrations.lightning`` (``grd[lightning]``) and ``grd_blocks.integrations.hf``
(``grd[hf]``) import their framework only when imported themselves; this package imports nothing, so
``import grd_blocks`` stays cheap. Nothing here is Prefect-specific. ``_stopping`` is what they share: when
to save and stop (SIGTERM, SIGINT, grd's warning signal, the ``GRD_TIME_LEFT_S`` budget) and how to leave.
"""
