"""The Prefect edge of a run: its final states and its results artifact.

Invariant: a run's Prefect state says what its report says: COMPLETED -> Completed, FAILED -> Failed,
TIMEOUT -> Failed named "TimedOut" (Prefect's own name for a timed-out run; 3.8.8 has no TimedOut helper),
CANCELLED -> Cancelled, SKIPPED -> Completed named "Skipped". A run's or phase's state carries its report
as its data (a command task's carries none: its row goes to its runner in the process, see benchmark_flow);
a state that did not complete carries it inside a ``RunEnded`` (prefect_edge/run_end.py), the exception
Prefect raises for it, so no run ends in a TypeError traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Completed, Failed

from grd_blocks.orchestration.status import Status
from grd_blocks.prefect_edge.api_outage import outage_line, unreachable, with_retries
from grd_blocks.prefect_edge.artifacts import results_artifact_key
from grd_blocks.prefect_edge.run_end import RunEnded
from grd_blocks.report import BenchmarkReport, table_left_out, table_rows

__all__ = ["final_state", "publish_results"]


def final_state(status: Status, data: Any, message: str) -> State[Any]:
    """The Prefect state a flow or task returns for a node that ended in ``status``."""
    if status is Status.COMPLETED:
        return Completed(data=data, message=message)
    if status is Status.SKIPPED:
        return Completed(name="Skipped", data=data, message=message)
    ended = RunEnded(message, data)
    if status is Status.TIMEOUT:
        return Failed(name="TimedOut", data=ended, message=message)
    if status is Status.CANCELLED:
        return Cancelled(data=ended, message=message)
    return Failed(data=ended, message=message)


def publish_results(report: BenchmarkReport, logger: Any, report_path: Path | str) -> None:
    """Create the results table artifact of ``report`` (TIMEOUT rows show as ``⏱ TIMEOUT``; past
    ``report.TABLE_ROWS`` rows, every row that did not complete and the first completed ones, the description
    naming how many were left out and ``report_path``, which has them all), asked again while the API does
    not answer (api_outage.py); if it never does, one WARNING line: the report file has every row, and the
    run's outcome does not depend on its table."""
    description = (f"grd benchmark **{report.benchmark}**: {report.status.value} in {report.elapsed_s:.1f}s, "
                   f"run key `{report.run_key}`, exit code {report.exit_code}")
    table = table_rows(report)  # built once, whatever the retries below
    left_out = table_left_out(report)
    if left_out:
        description += (f"; the table shows {len(table):,} of {len(table) + left_out:,} commands (every one "
                        f"that did not complete first), the report `{report_path}` has them all")
    try:
        with_retries(lambda: create_table_artifact(
            table=table,
            key=results_artifact_key(report.benchmark),
            description=description,
        ))
    except Exception as exc:
        if not unreachable(exc):
            raise
        logger.warning("benchmark %s: results table not published: %s", report.benchmark, outage_line(exc))
