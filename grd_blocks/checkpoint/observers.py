"""Who hears about a commit: experiment trackers told each checkpoint's URL, manifest and metrics.

Invariants:

* Observers are bound when ``save``/``save_async`` is called, in the caller's thread (a tracker's "active
  run" is often thread-local), and called after the checkpoint is committed and ``LATEST.json`` moved, in the
  thread that committed it; nothing is reported for a save that did not commit.
* An observer's failure is logged and never raised: the checkpoint is committed whatever a tracker says.
* Trackers are found through the ``grd.trackers`` entry points (pyproject.toml: the tracker's module name ->
  a function returning the observer of its active run), so the store names no integration. One is loaded
  only when the user's code has already imported the tracker itself (MLflow: ``mlflow`` in ``sys.modules``),
  so the store never pulls one in; ``GRD_TRACKING=0`` turns the automatic ones off.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points

from grd_blocks.checkpoint.payload.manifest import Manifest
from grd_blocks.checkpoint.refs import CheckpointRef

logger = logging.getLogger("grd.checkpoint")

Observer = Callable[[CheckpointRef, Manifest], None]

TRACKERS_GROUP = "grd.trackers"


@functools.cache
def trackers() -> dict[str, EntryPoint]:
    """Tracker module name -> the entry point of the function returning its active run's observer."""
    return {point.name: point for point in entry_points(group=TRACKERS_GROUP)}


def bind_automatic(environ: dict[str, str] | None = None) -> list[Observer]:
    """The observers of the trackers the process uses and has a run active in, bound to that run now."""
    env = os.environ if environ is None else environ
    if env.get("GRD_TRACKING", "1") == "0":
        return []
    bound: list[Observer] = []
    for tracker, point in trackers().items():
        if tracker not in sys.modules:
            continue
        try:
            observer = point.load()()
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
