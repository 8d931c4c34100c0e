"""Resumable training where users already train: one small module per framework.

``grd_blocks.integrations.lightning`` (``grd[lightning]``), ``grd_blocks.integrations.huggingface``
(``grd[hf]``) and ``grd_blocks.integrations.mlflow`` (``grd[mlflow]``) import their framework only when
imported themselves; this package imports nothing, so ``import grd_blocks`` stays cheap. Nothing here is
Prefect-specific. What they share: ``_stopping`` (when to save and stop: SIGTERM, SIGINT, grd's warning
signal, the ``GRD_TIME_LEFT_S`` budget; and how to leave) and ``_values`` (a framework's checkpoint dicts and
metrics as plain data the store holds). Every integration commits through ``RunCheckpoints.save``, so the
store's protocol, retention and trackers (``grd_blocks.checkpoint.observers``) apply to all of them.
"""
