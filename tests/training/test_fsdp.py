"""examples/train_fsdp.py (FSDP2, sharded checkpoints through ResumableTraining) under torchrun, gloo on CPU:
a stop and resume on the same number of ranks is bit-identical to a run that never stopped; resumed on
another number of ranks it stays within ``TOLERANCE`` (docs/fsdp.md); under `grd run` a budget stop is
TIMEOUT 124 and `grd run --resume` continues it on another number of ranks.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from grd_blocks.checkpoint import RunCheckpoints
from tests.training import _script

pytestmark = pytest.mark.torch_procs

SCRIPT = _script.ROOT / "examples" / "train_fsdp.py"
STEPS = ["--steps", "40", "--save-every-steps", "5"]
TOLERANCE = 1e-5
"""Largest absolute difference of any parameter between a run resumed on another number of ranks and one
that never stopped (docs/fsdp.md): the same global batches, summed in another order."""


def _run(args: list[str], nproc: int) -> str:
    rc, out = _script.run(args, nproc=nproc, script=SCRIPT)
    assert rc == 0, out
    return out


def _params(report: Path) -> dict[str, torch.Tensor]:
    result = json.loads(report.read_text())
    return {key: torch.tensor(value) for key, value in result["params"].items()}


def _largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the report of 2 ranks that never stopped, a store where 2 ranks stopped after step 17)."""
    root = tmp_path_factory.mktemp("fsdp")
    _run([*STEPS, "--checkpoint-url", str(root / "full"), "--report", str(root / "full.json")], nproc=2)
    stop = [*STEPS, "--checkpoint-url", str(root / "stopped"), "--stop-at-step", "17"]
    rc, out = _script.run(stop, nproc=2, script=SCRIPT)
    assert rc != 0 and "state saved to" in out, out
    yield root / "full.json", root / "stopped"


def test_stopped_and_resumed_on_the_same_two_ranks_is_bit_identical(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    full, stopped = reference
    store = tmp_path / "store"
    shutil.copytree(stopped, store)
    latest = RunCheckpoints.from_url(str(store)).latest()
    assert latest is not None and latest.name == "step_17" and latest.metadata["world_size"] == 2
    out = _run([*STEPS, "--checkpoint-url", str(store), "--report", str(tmp_path / "r.json")], nproc=2)
    assert "starting at step 17 on 2 ranks" in out
    assert _largest_difference(_params(tmp_path / "r.json"), _params(full)) == 0.0


@pytest.mark.parametrize("nproc", [1, 3])
def test_resumed_on_another_number_of_ranks_stays_within_the_tolerance(
    reference: tuple[Path, Path], tmp_path: Path, nproc: int
) -> None:
    full, stopped = reference
    store = tmp_path / "store"
    shutil.copytree(stopped, store)
    out = _run([*STEPS, "--checkpoint-url", str(store), "--report", str(tmp_path / "r.json")], nproc=nproc)
    assert f"starting at step 17 on {nproc} ranks" in out
    difference = _largest_difference(_params(tmp_path / "r.json"), _params(full))
    print(f"2 -> {nproc} ranks: largest parameter difference {difference:.3g}")
    assert difference <= TOLERANCE


def test_a_fork_starts_from_another_runs_checkpoint_then_continues_its_own_progress(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--resume-from`` one checkpoint of the stopped 2-rank run: the fork starts there on 1 rank and stops
    at step 20; run again with its prefix only in GRD_CHECKPOINT_URL (as outside grd) on 3 ranks, it continues
    from its own step 20, not from the checkpoint it forked from, and ends within the tolerance."""
    full, stopped = reference
    fork, report = tmp_path / "fork", tmp_path / "r.json"
    rc, out = _script.run([*STEPS, "--checkpoint-url", str(fork), "--resume-from", f"{stopped}/step_15",
                           "--stop-at-step", "20"], nproc=1, script=SCRIPT)
    assert rc != 0 and "starting at step 15 on 1 ranks" in out and "step_20" in out, out
    rc, out = _script.run([*STEPS, "--resume-from", f"{stopped}/step_15", "--report", str(report)], nproc=3,
                          script=SCRIPT, GRD_CHECKPOINT_URL=str(fork))
    assert rc == 0 and "starting at step 20 on 3 ranks" in out, out
    assert _largest_difference(_params(report), _params(full)) <= TOLERANCE
    assert [ref.name for ref in RunCheckpoints.from_url(str(fork)).checkpoints()][-1] == "step_40"


def _spec(tmp_path: Path, name: str, nproc: int, extra: list[str]) -> Path:
    argv = [*_script.command([*STEPS, *extra], nproc=nproc, script=SCRIPT)]
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: fsdp
        phases:
          - name: train
            commands:
              - name: fsdp
                run: {json.dumps(argv)}
                timeout: 300s
                grace: 5s
                cwd: {json.dumps(str(_script.ROOT))}
                env: {{OMP_NUM_THREADS: "1", PYTHONPATH: {json.dumps(str(_script.ROOT))}}}
        """))
    return path


def _grd(tmp_path: Path, spec: Path, *args: str) -> dict[str, Any]:
    import subprocess

    from tests.cli.helpers import grd_env

    report = tmp_path / f"{spec.stem}.json"
    done = subprocess.run(
        [sys.executable, "-m", "grd_blocks.cli", "run", str(spec), "--store", str(tmp_path / "store"),
         "--report", str(report), *args],
        cwd=tmp_path, env=grd_env(), capture_output=True, text=True, timeout=600,
    )
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    row: dict[str, Any] = json.loads(report.read_text())["phases"][0]["commands"][0]
    row["exit_code"] = done.returncode
    return row


def test_under_grd_a_budget_stop_is_timeout_and_resume_continues_on_three_ranks(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    """`grd run` runs torchrun (2 ranks) until their budget (``--time-left``) stops them: TIMEOUT 124 with
    a committed sharded checkpoint; `grd run --resume` runs the same command on 3 ranks, which continues
    from that checkpoint and ends within the tolerance of the run that never stopped."""
    full, _ = reference
    first = _grd(tmp_path, _spec(tmp_path, "first", 2, ["--step-delay", "0.15", "--time-left", "4"]),
                 "--run-key", "fsdp-1")
    log = Path(tmp_path, first["log_path"]).read_text()
    assert (first["status"], first["returncode"], first["exit_code"]) == ("TIMEOUT", 124, 124), first
    prefix = RunCheckpoints.from_url(str(tmp_path / "store" / "fsdp-1" / "commands" / "train.fsdp"))
    stopped = prefix.latest()
    assert stopped is not None and 0 < stopped.index < 40 and stopped.metadata["reason"] == "deadline", log
    second = _grd(tmp_path, _spec(tmp_path, "second", 3, ["--report", str(tmp_path / "r.json")]),
                  "--resume", "fsdp-1")
    assert (second["status"], second["exit_code"]) == ("COMPLETED", 0), second
    assert f"starting at step {stopped.index} on 3 ranks" in Path(tmp_path, second["log_path"]).read_text()
    assert _largest_difference(_params(tmp_path / "r.json"), _params(full)) <= TOLERANCE
