"""Background sharded saves (sharded.py, async_writer.ShardedWriter): the loop is blocked only while it
stages, the state is taken at the call, the commit waits for every rank's write, a failure on one rank is
raised on every rank, and what an async save committed loads resharded.

Ordering, never timing: a write is held by a state value whose pickling (DCP's, in the background write)
waits for a gate the test opens only after the loop has gone on (tests/checkpoint/_sharded_ranks.py ``Held``).
The multi-rank tests are real gloo processes; what was committed is judged by test_sharded's independent
reader.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import CheckpointError
from tests.checkpoint import sharded_procs
from tests.checkpoint._sharded_ranks import GATE_LIMIT_S, Held
from tests.checkpoint.test_sharded import independent_check

SHARD = 3 * 2**12
"""Elements of each rank's shard when 2 ranks save; the whole tensor splits evenly on 1, 2, 3."""


# ------------------------------------------------------------------------------------ in one process
def test_the_state_is_taken_at_the_call_and_committed_only_once_the_held_write_completes(
    tmp_path: Path,
) -> None:
    run = RunCheckpoints.from_url(str(tmp_path / "run"), keep_last=1)
    run.save_sharded({"weights": torch.zeros(4)}, step=0)
    gate = threading.Event()
    weights = torch.arange(4.0)
    run.save_sharded_async({"weights": weights, "extra": {"n": [1]}, "held": Held(gate)}, step=1)
    weights.fill_(9.0)  # the loop goes on while the write is held
    latest = run.latest()
    assert latest is not None and latest.name == "step_0"  # no commit (and no retention) before the write
    assert [ref.name for ref in run.checkpoints()] == ["step_0"]
    gate.set()
    run.flush()
    found = independent_check(tmp_path / "run")
    assert found == {"visible": ["step_1"], "torn": {}, "latest": "step_1", "latest_index": 1, "staging": []}
    state: dict[str, Any] = {"weights": torch.zeros(4), "extra": {"n": [0]}}
    ref = run.load_sharded(state)
    assert ref is not None and ref.name == "step_1"
    assert torch.equal(state["weights"], torch.arange(4.0)) and state["extra"] == {"n": [1]}


def test_saves_made_while_a_write_is_held_are_superseded_by_the_newest(tmp_path: Path) -> None:
    run = RunCheckpoints.from_url(str(tmp_path / "run"))
    gate = threading.Event()
    held = Held(gate)
    run.save_sharded_async({"weights": torch.full((2,), 1.0), "held": held}, step=1)
    assert held.entered.wait(GATE_LIMIT_S)  # step 1's write has started (a save not started is superseded)
    run.save_sharded_async({"weights": torch.full((2,), 2.0)}, step=2)
    run.save_sharded_async({"weights": torch.full((2,), 3.0)}, step=3)  # step 2 never started: dropped
    gate.set()
    run.flush()
    assert run.superseded == ["step_2"]
    assert independent_check(tmp_path / "run")["visible"] == ["step_1", "step_3"]
    state: dict[str, Any] = {"weights": torch.zeros(2)}
    assert run.load_sharded(state) is not None and torch.equal(state["weights"], torch.full((2,), 3.0))


def test_a_failed_background_write_is_raised_by_the_next_call_and_leaves_nothing_visible(
    tmp_path: Path,
) -> None:
    run = RunCheckpoints.from_url(str(tmp_path / "run"))
    run.save_sharded_async({"weights": torch.ones(2)}, step=1)
    run.flush()
    run.save_sharded_async({"weights": torch.ones(2), "bad": lambda: None}, step=2)  # returns: staged
    with pytest.raises(CheckpointError, match="could not write this state"):
        run.flush()
    run.flush()  # raised once
    assert independent_check(tmp_path / "run") == {"visible": ["step_1"], "torn": {}, "latest": "step_1",
                                                    "latest_index": 1, "staging": []}
    run.save_sharded_async({"weights": torch.ones(2)})  # numbered after the latest, in the background
    run.flush()
    assert run.latest() is not None and run.latest().name == "step_2"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ real ranks
@pytest.mark.torch_procs
def test_the_loop_steps_while_a_rank_write_is_held_and_the_old_state_loads_on_1_and_3_ranks(
    tmp_path: Path,
) -> None:
    store = str(tmp_path / "run")
    done = sharded_procs.run(2, "async_held", store, str(SHARD))
    by_rank = [result for result in done.results if "stepped" in result]
    assert [(r["stepped"], r["latest_while_held"], r["changed"]) for r in by_rank] == [
        (2.0, None, [99.0])] * 2
    assert [r["committed"] for r in done.results if "committed" in r] == ["step_1", "step_1"]
    found = independent_check(tmp_path / "run")
    assert found["torn"] == {} and found["latest"] == "step_1" and found["staging"] == []
    for world in (1, 3):
        loaded = sharded_procs.run(world, "load_latest", store, str(SHARD * 2 // world))
        found_loads = {(r["loaded"], tuple(r["values"]), r["step"]) for r in loaded.results}
        assert found_loads == {("step_1", (1.0,), 1)}


@pytest.mark.torch_procs
def test_a_write_failing_on_one_rank_is_raised_on_both_at_their_next_call(tmp_path: Path) -> None:
    done = sharded_procs.run(2, "async_fail", str(tmp_path / "run"), str(SHARD))
    assert [(r["rank"], r["second"], r["latest"]) for r in done.results] == [(0, "step_2", "step_3"),
                                                                              (1, "step_2", "step_3")]
    for result in done.results:
        assert result["raised"] is not None and result["raised"].startswith("CheckpointError"), result
        assert "step_1" in result["raised"], result
    found = independent_check(tmp_path / "run")
    assert found == {"visible": ["step_2", "step_3"], "torn": {}, "latest": "step_3", "latest_index": 3,
                     "staging": []}


@pytest.mark.torch_procs
def test_an_fsdp2_state_saved_async_is_the_state_at_the_call_and_loads_on_1_and_3_ranks(
    tmp_path: Path,
) -> None:
    store, reference = str(tmp_path / "run"), str(tmp_path / "full.pt")
    saved = sharded_procs.run(2, "fsdp_save", store, "3", reference, "async")
    assert [result["saved"] for result in saved.results] == ["step_3", "step_3"]
    for world in (1, 3):
        loaded = sharded_procs.run(world, "fsdp_load", store, reference)
        assert [(r["loaded"], r["extra"], r["mismatched"]) for r in loaded.results] == [
            ("step_3", {"step": 3}, [])] * world
