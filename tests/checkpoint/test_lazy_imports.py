"""Importing the store and saving/loading JSON state never imports torch, numpy or a tracker (MLflow); torch
state still loads."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import torch

REPO = pathlib.Path(__file__).resolve().parents[2]


def _python(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_json_state_round_trip_never_imports_torch_numpy_or_a_tracker(tmp_path: pathlib.Path) -> None:
    result = _python(
        f"""
import json, sys
import grd_blocks.prefect_edge.block, grd_blocks.checkpoint
from grd_blocks.checkpoint import CheckpointEngine, RunCheckpoints
after_import = sorted(m for m in ("torch", "numpy", "mlflow") if m in sys.modules)
engine = CheckpointEngine({str(tmp_path / "store")!r})
engine.save_checkpoint("bench", state={{"done": ["prep", "train"], "score": 0.5}}, step=2)
run = RunCheckpoints.from_url({str(tmp_path / "store" / "bench")!r})
loaded = run.load()
run.save_async({{"done": ["prep", "train", "eval"]}}, step=3)
run.flush()
print(json.dumps({{"after_import": after_import, "loaded": loaded, "latest": run.latest().index,
                  "verify": run.verify("step_3"),
                  "modules": sorted(m for m in ("torch", "numpy", "mlflow") if m in sys.modules)}}))
"""
    )
    assert result == {
        "after_import": [],
        "loaded": {"done": ["prep", "train"], "score": 0.5},
        "latest": 3,
        "verify": [],
        "modules": [],
    }


def test_torch_state_loads_in_a_process_that_never_imported_torch(tmp_path: pathlib.Path) -> None:
    store = tmp_path / "store"
    from grd_blocks.checkpoint import CheckpointEngine

    CheckpointEngine(str(store)).save_checkpoint(
        "train", state={"w": torch.arange(6.0), "epoch": 4, "pair": (1, 2)}, step=4
    )
    result = _python(
        f"""
import json, sys
from grd_blocks.checkpoint import CheckpointEngine
state = CheckpointEngine({str(store)!r}).load_checkpoint("train")
print(json.dumps({{"w": state["w"].tolist(), "epoch": state["epoch"], "pair": list(state["pair"]),
                  "torch_loaded": "torch" in sys.modules}}))
"""
    )
    assert result == {"w": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "epoch": 4, "pair": [1, 2], "torch_loaded": True}


def test_importing_the_integrations_package_imports_no_framework() -> None:
    result = _python(
        """
import json, sys
import grd_blocks, grd_blocks.integrations
loaded = sorted(m for m in ("lightning", "transformers", "torch", "mlflow") if m in sys.modules)
print(json.dumps({"loaded": loaded}))
"""
    )
    assert result == {"loaded": []}
