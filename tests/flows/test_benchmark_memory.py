"""What a long phase keeps in the flow process: nothing per command beyond its report row, kept as its JSON
text in the run's compressed store, not as an object (#30's memory goal). Counted independently: live objects
by type from the garbage collector, while the phase runs."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext

from grd_blocks.checkpoint.payload.serialization import JsonText
from grd_blocks.orchestration import run as run_module
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CommandReport
from tests.flows.helpers import run_spec

pytestmark = pytest.mark.usefixtures("prefect_api")

COMMANDS = 120
EARLY, LATE = 20, 110  # commands finished when the live objects are counted


def _live(kind: type) -> int:
    gc.collect()
    return sum(isinstance(obj, kind) for obj in gc.get_objects())


def _run_long_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: Callable[[int], None]) -> None:
    """A phase of ``COMMANDS`` x ``true``; ``recorded(n)`` is called in the run as its nth row is recorded."""
    record = run_module.BenchmarkRun.record
    count = [0]

    def counting(self: run_module.BenchmarkRun, phase: str, row: CommandReport) -> None:
        record(self, phase, row)
        count[0] += 1
        recorded(count[0])

    monkeypatch.setattr(run_module.BenchmarkRun, "record", counting)
    commands = "\n".join(f"              - {{name: c{i}, run: 'true'}}" for i in range(COMMANDS))
    result = run_spec(tmp_path, f"""
        name: long-phase
        phases:
          - name: p
            commands:
{commands}
    """)
    assert [row.status for row in result.phase("p").commands] == [Status.COMPLETED] * COMMANDS


def test_a_phase_keeps_no_prefect_state_asset_entry_or_row_model_per_command_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: dict[int, tuple[int, int, int, int]] = {}

    def count_live(recorded: int) -> None:
        if recorded in (EARLY, LATE):
            context = FlowRunContext.get()
            assets = len(context.task_run_assets) if context is not None else -1
            counts[recorded] = (_live(State), _live(CommandReport), _live(JsonText), assets)

    _run_long_phase(tmp_path, monkeypatch, count_live)
    states_early, models_early, texts_early, assets_early = counts[EARLY]
    states_late, models_late, texts_late, assets_late = counts[LATE]
    # Prefect's asset map of the phase's flow run (an empty entry per command task before)
    assert assets_early >= 0 and assets_late - assets_early < 10, (assets_early, assets_late)
    assert models_early >= 1 and models_late >= 1  # the scan sees the row being recorded (the count works)
    assert texts_late - texts_early < 10, (texts_early, texts_late)  # was one per command run
    assert states_late - states_early < 10, (states_early, states_late)  # was one per command run
    assert models_late - models_early < 10, (models_early, models_late)  # was one per command run


def test_a_phase_interns_no_new_string_per_command_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interned strings live in one interpreter-wide table that is rebuilt at twice its size once dead names
    fill it: pathlib interned four per command (its log, lock and budget-stop file names, and the path of
    Prefect's result record of its task run, keyed by a fresh uuid): ~2 MB more at ~7,500 commands. Counted
    at ``sys.intern``, which pathlib calls, between two points of a phase."""
    recorded = [0]
    seen: set[str] = set()  # every string interned so far
    new: set[str] = set()  # those first interned while commands EARLY to LATE ran
    intern = sys.intern

    def counting_intern(text: str) -> str:
        if text not in seen:
            seen.add(text)
            if EARLY <= recorded[0] < LATE:
                new.add(text)
        return intern(text)

    monkeypatch.setattr(sys, "intern", counting_intern)
    _run_long_phase(tmp_path, monkeypatch, lambda n: recorded.__setitem__(0, n))
    assert len(seen) > 10, seen  # the count sees pathlib's calls
    assert len(new) < 10, sorted(new)  # was four per command run


def test_a_row_handed_back_after_its_runner_stopped_waiting_is_dropped_not_kept() -> None:
    from grd_blocks.prefect_edge.benchmark_flow import _Handoff

    handoff, plan, other = _Handoff(), cast(Any, object()), cast(Any, object())
    row = CommandReport(name="c", status=Status.COMPLETED)
    handoff.expect(plan)
    handoff.put(plan, row)
    assert handoff.take(plan) is row
    handoff.put(plan, row)  # its task finished after the runner gave up on it (a Prefect backstop)
    handoff.put(other, row)  # a plan nobody expects
    assert handoff.take(plan) is None and handoff.take(other) is None
    assert not handoff._rows  # nothing kept for the rest of the run
