"""Who hears about a commit: experiment trackers told each checkpoint's URL, manifest and metrics.

Invariants:

* Observers are bound when ``save``/``save_async`` is called, in the caller's thread (a tracker's "active
  run" is often thread-local), and called after the checkpoint is committed and ``LATEST.json`` moved, in the
  thread that committed it; nothing is reported for a save that did not commit.
* An observer's failure is logged and never raised: the checkpoint is committed whatever a tracker says.
* A tracker's module is imported here only when the user's code has already imported the tracker itself
  (MLflow: ``mlflow`` in ``sys.modules``), so the store never pulls one in; ``GRD_TRACKING=0`` turns the
  automatic ones off.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from grd_blocks.checkpoint.payload.manifest import Manifest
from grd_blocks.checkpoint.refs import CheckpointRef

logger = logging.getLogger("grd.checkpoint")

Observer = Callable[[CheckpointRef, Manifest], None]

# tracker module -> "module:function" returning the observer of its active run (None without one)
AUTOMATIC: dict[str, str] = {"mlflow": "grd_blocks.integrations.mlflow:observer_for_active_run"}


def bind_automatic(environ: dict[str, str] | None = None) -> list[Observer]:
    """The observers of the trackers the process uses and has a run active in, bound to that run now."""
    env = os.environ if environ is None else environ
    if env.get("GRD_TRACKING", "1") == "0":
        return []
    bound: list[Observer] = []
    for tracker, target in AUTOMATIC.items():
        if tracker not in sys.modules:
            continue
        module_name, _, function = target.partition(":")
        try:
            observer = getattr(importlib.import_module(module_name), function)()
        except Exception:  # a tracker we cannot talk to must not fail the save
            logger.warning("cannot report checkpoints to %s", tracker, exc_info=True)
            continue
        if observer is not None:
            bound.append(observer)
    return bound


def notify(observers: Sequence[Observer], ref: CheckpointRef, manifest: Manifest) -> None:
    """Tell each observer about a committed checkpoint; failures are logged, never raised."""
    for observer in observers:
        try:
            observer(ref, manifest)
        except Exception:
            logger.warning("reporting %s to a tracker failed; the checkpoint is committed", ref.url,
                           exc_info=True)
