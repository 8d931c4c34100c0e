"""Bench-only: ``examples/train_mlp.py`` leaving as it did before ``exit_now``, by ``sys.exit(main())``
(through the interpreter's teardown): the "before" variant of ``bench_training_stop.py``, not a benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from train_mlp import main

if __name__ == "__main__":
    sys.exit(main())
