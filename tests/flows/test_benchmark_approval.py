"""Long-run approval for benchmarks: a spec whose timeout exceeds `approval_budget` needs a decision first."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flows.benchmark import benchmark
from grd_blocks.orchestration.status import Status
from grd_blocks.prefect_edge import open_ledger
from grd_blocks.report import BenchmarkReport

pytestmark = pytest.mark.usefixtures("prefect_api")


def _run(tmp_path: Path, spec_text: str, run_key: str, **params: object) -> BenchmarkReport:
    spec = tmp_path / "bench.yaml"
    spec.write_text(textwrap.dedent(spec_text))
    report_path = tmp_path / f"{run_key}.json"
    benchmark(spec_path=str(spec), run_key=run_key, store=str(tmp_path / "ckpt"),
              report_path=str(report_path), return_state=True, **params)
    return BenchmarkReport.model_validate_json(report_path.read_text())


def test_a_benchmark_over_its_approval_budget_is_approved_once_and_retries_reuse_the_decision(
    tmp_path: Path,
) -> None:
    spec = """
        name: long-one
        timeout: 2h
        phases:
          - name: only
            commands:
              - {name: hello, run: "true"}
        """
    first = _run(tmp_path, spec, "appr-1", approval_budget="10m", auto_approve=True)
    assert first.status is Status.COMPLETED
    ledger = open_ledger(str(tmp_path / "ckpt"), "appr-1")
    decision = ledger.decision()
    assert decision is not None and decision.kind == "approved" and decision.who == "auto_approve"
    again = _run(tmp_path, spec, "appr-1", approval_budget="10m")  # no auto_approve: the decision holds
    assert again.status is Status.COMPLETED
    assert [r.kind for r in ledger.records()][-1] == "reused"


def test_a_benchmark_without_a_timeout_is_capped_at_its_approval_budget(tmp_path: Path) -> None:
    report = _run(tmp_path, """
        name: unbounded
        grace: 0s
        phases:
          - name: only
            commands:
              - {name: sleeper, run: sleep 60}
        """, "appr-2", approval_budget="1s")
    row = report.phases[0].commands[0]
    assert row.status is Status.TIMEOUT and row.timeout is not None
    assert row.timeout.level == "benchmark" and row.timeout.inherited
