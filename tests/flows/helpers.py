"""Run the benchmark flow on a YAML spec written to a temp dir and read back its report and Prefect state."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import State

from flows.benchmark import benchmark
from grd_blocks.report import BenchmarkReport, CommandReport, PhaseReport


@dataclass
class Result:
    state: State[Any]
    report: BenchmarkReport
    report_path: Path

    def phase(self, name: str) -> PhaseReport:
        return next(p for p in self.report.phases if p.name == name)

    def command(self, phase: str, name: str) -> CommandReport:
        return next(c for c in self.phase(phase).commands if c.name == name)


def run_spec(tmp_path: Path, yaml_text: str, *, run_key: str | None = "t1", resume_from: str | None = None,
             retries: int = 0, timeouts: bool = True) -> Result:
    spec = tmp_path / "bench.yaml"
    spec.write_text(textwrap.dedent(yaml_text).replace("$D", str(tmp_path)))
    report_path = tmp_path / "reports" / f"{run_key or resume_from or 'run'}.json"
    flow = benchmark.with_options(retries=retries, retry_delay_seconds=0) if retries else benchmark
    state = flow(spec_path=str(spec), run_key=run_key, resume_from=resume_from, store=str(tmp_path / "ckpt"),
                 timeouts=timeouts, report_path=str(report_path), return_state=True)
    report = BenchmarkReport.model_validate_json(report_path.read_text())
    return Result(state=state, report=report, report_path=report_path)
