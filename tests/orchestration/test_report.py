"""The report's JSON shape (docs/design.md) and its renderings."""

from __future__ import annotations

import json
import pickle
import tracemalloc
from pathlib import Path

from grd_blocks.orchestration.status import Status
from grd_blocks.report import (
    TABLE_ROWS,
    BenchmarkReport,
    CommandReport,
    CommandRows,
    PhaseReport,
    TimeoutInfo,
    render_summary,
    table_left_out,
    table_rows,
    write_report,
)
from grd_blocks.row_texts import RowTexts


def _report() -> BenchmarkReport:
    timeout = TimeoutInfo(level="phase", configured_s=90, effective_s=2.0, inherited=True, term_sent_s=2.0,
                          kill_sent_s=None, survivors=0)
    train = CommandReport(name="train", status=Status.TIMEOUT, returncode=-15, elapsed_s=2.01, attempts=1,
                          stdout_tail="step 1\n", timeout=timeout, budget_s=2.0)
    ok = CommandReport(name="hello", status=Status.COMPLETED, returncode=0, elapsed_s=0.01, attempts=1)
    phase = PhaseReport(name="smoke", status=Status.TIMEOUT, elapsed_s=2.1, commands=[ok, train])
    return BenchmarkReport(benchmark="nightly", status=Status.TIMEOUT, run_key="r1", flow_run_id="f",
                           elapsed_s=2.2, exit_code=124, phases=[phase])


def test_json_has_the_design_keys_and_timeout_block() -> None:
    data = json.loads(_report().to_json())
    assert {"benchmark", "status", "run_key", "flow_run_id", "elapsed_s", "phases"} <= data.keys()
    phase = data["phases"][0]
    assert {"name", "status", "elapsed_s", "commands"} <= phase.keys()
    hello, train = phase["commands"]
    assert {"name", "status", "returncode", "elapsed_s", "attempts", "stdout_tail", "stderr_tail",
            "timeout"} <= train.keys()
    assert train["timeout"] == {"level": "phase", "configured_s": 90, "effective_s": 2.0, "inherited": True,
                                "term_sent_s": 2.0, "kill_sent_s": None, "survivors": 0, "warn_sent_s": None,
                                "stopped_by": None, "launcher_returncode": None}
    assert hello["timeout"] is None and hello.keys() == train.keys()
    assert data["status"] == "TIMEOUT"


def test_a_row_round_trips_through_json(tmp_path: Path) -> None:
    report = _report()
    path = write_report(report, tmp_path / "sub" / "r.json")
    assert BenchmarkReport.model_validate_json(path.read_text()) == report


def test_summary_and_artifact_rows_make_timeouts_visible() -> None:
    text = render_summary(_report())
    assert "TIMEOUT" in text and "phase deadline (inherited)" in text and "exit code 124" in text
    rows = table_rows(_report())
    assert [r["status"] for r in rows] == ["✅ COMPLETED", "⏱ TIMEOUT"]


def test_a_table_past_its_limit_keeps_every_row_that_did_not_complete_in_the_reports_order() -> None:
    statuses = [Status.COMPLETED] * 1_500
    for number, status in ((3, Status.FAILED), (700, Status.TIMEOUT), (1_499, Status.SKIPPED)):
        statuses[number] = status
    rows = [CommandReport(name=f"c{i}", status=status) for i, status in enumerate(statuses)]
    report = BenchmarkReport(benchmark="wide", status=Status.FAILED, run_key="r", exit_code=1,
                             phases=[PhaseReport(name="p", status=Status.FAILED, commands=rows)])
    table = table_rows(report)
    assert len(table) == TABLE_ROWS == 1_000 and table_left_out(report) == 500
    numbers = [int(row["command"][1:]) for row in table]
    assert numbers == sorted(set(numbers))  # the report's order, no row twice
    assert {3, 700, 1_499} <= set(numbers)  # every row that did not complete
    completed = [i for i, status in enumerate(statuses) if status is Status.COMPLETED]
    assert [i for i in numbers if i not in {3, 700, 1_499}] == completed[: TABLE_ROWS - 3]  # then the first
    assert table_rows(report, limit=2) == [row for row in table if row["command"] in {"c3", "c700"}]
    few = [PhaseReport(name="p", status=Status.FAILED, commands=rows[:9])]
    small = report.model_copy(update={"phases": few})
    assert [row["command"] for row in table_rows(small)] == [f"c{i}" for i in range(9)]
    assert table_left_out(small) == 0


def test_a_launcher_wrapped_budget_stop_reads_as_stopped_itself_with_the_launchers_code() -> None:
    timeout = TimeoutInfo(level="command", configured_s=25, effective_s=25.0, inherited=False,
                          term_sent_s=None, kill_sent_s=None, survivors=0, launcher_returncode=1)
    row = CommandReport(name="ddp", status=Status.TIMEOUT, returncode=124, elapsed_s=24.8, attempts=1,
                        timeout=timeout)
    report = BenchmarkReport(benchmark="ddp", status=Status.TIMEOUT, run_key="r", exit_code=124,
                             phases=[PhaseReport(name="train", status=Status.TIMEOUT, commands=[row])])
    assert table_rows(report)[0]["note"] == (
        "command deadline, granted 25.0s; stopped itself, its launcher exited 1"
    )
    assert "TIMEOUT  124" in render_summary(report)


def test_a_written_report_is_the_models_json_and_never_holds_every_row_at_once(tmp_path: Path) -> None:
    rows = [CommandReport(name=f"c{i}", status=Status.COMPLETED, returncode=0, elapsed_s=0.01, attempts=1,
                          stdout_tail=f"ünïcode line {i}\n", log_path=f"/logs/p.c{i}.attempt-1.log")
            for i in range(20_000)]
    wide = PhaseReport(name="wide", status=Status.COMPLETED, commands=rows)
    empty = PhaseReport(name="empty", status=Status.SKIPPED)
    report = _report().model_copy(update={"phases": [*_report().phases, wide, empty]})
    whole = json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    tracemalloc.start()
    try:
        path = write_report(report, tmp_path / "report.json")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.read_text(encoding="utf-8") == whole  # byte for byte what encoding the whole report gives
    assert peak < len(whole.encode()) / 10, (peak, len(whole))  # encoding it whole: several times its size


def test_rows_kept_as_text_read_back_equal_and_dump_as_the_models_did() -> None:
    report = _report()
    rows = report.phases[0].commands
    assert isinstance(rows, CommandRows)
    models = [row for row in rows]
    assert [row.name for row in models] == ["hello", "train"] and rows[1].timeout is not None
    assert rows == models and rows == CommandRows(models) and rows[0:1] == models[:1]
    # a pydantic dump lists each row in the model's field order, nested blocks included, as before
    dumped = report.model_dump(mode="json")["phases"][0]["commands"]
    assert dumped == [m.model_dump(mode="json") for m in models] and list(dumped[0])[:2] == ["name", "status"]
    assert report.model_dump()["phases"][0]["commands"][1]["status"] is Status.TIMEOUT
    again = BenchmarkReport.model_validate_json(report.to_json())
    assert again == report and again.phases[0].commands == models


def test_a_row_is_kept_once_per_store_and_a_copy_is_kept_anew() -> None:
    store = RowTexts()
    row = CommandReport(name="c", status=Status.COMPLETED, returncode=0)
    number = row.kept_in(store)
    assert row.kept_in(store) == number and len(store) == 1  # the progress and the report share it
    assert CommandRows([row], store=store).texts() == [store.text(number)] and len(store) == 1
    assert json.loads(store.text(number)) == row.model_dump(mode="json")
    changed = row.model_copy(update={"resumed": True})
    assert json.loads(store.text(changed.kept_in(store)))["resumed"] is True and len(store) == 2
    assert row == CommandReport(name="c", status=Status.COMPLETED, returncode=0)  # its store is not compared
    assert pickle.loads(pickle.dumps(CommandRows([row, changed]))) == [row, changed]
