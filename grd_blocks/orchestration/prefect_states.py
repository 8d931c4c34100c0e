"""The Prefect edge of a run: final states, the results artifact, and output lines as run logs.

Invariant: a run's Prefect state says what its report says: COMPLETED -> Completed, FAILED -> Failed,
TIMEOUT -> Failed named "TimedOut" (Prefect's own name for a timed-out run; 3.8.8 has no TimedOut helper),
CANCELLED -> Cancelled, SKIPPED -> Completed named "Skipped". The state carries the report as its data. Output
lines reach the run logs in order, batched (one record per up to 200 lines or 0.2 s).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Completed, Failed

from grd_blocks.orchestration.status import Status
from grd_blocks.report import BenchmarkReport, table_rows

__all__ = ["LineBatcher", "artifact_key", "final_state", "line_logger", "publish_table"]


def final_state(status: Status, data: Any, message: str) -> State[Any]:
    """The Prefect state a flow or task returns for a node that ended in ``status``."""
    if status is Status.COMPLETED:
        return Completed(data=data, message=message)
    if status is Status.TIMEOUT:
        return Failed(name="TimedOut", data=data, message=message)
    if status is Status.CANCELLED:
        return Cancelled(data=data, message=message)
    if status is Status.SKIPPED:
        return Completed(name="Skipped", data=data, message=message)
    return Failed(data=data, message=message)


def artifact_key(benchmark: str) -> str:
    """A valid artifact key (lowercase letters, digits, dashes) for a benchmark's results table."""
    slug = re.sub(r"[^a-z0-9]+", "-", benchmark.lower()).strip("-") or "benchmark"
    return f"grd-{slug}"[:64]


def publish_table(report: BenchmarkReport) -> None:
    """Create the results table artifact of ``report`` (TIMEOUT rows show as ``⏱ TIMEOUT``)."""
    create_table_artifact(
        table=table_rows(report),
        key=artifact_key(report.benchmark),
        description=(
            f"grd benchmark **{report.benchmark}**: {report.status.value} in {report.elapsed_s:.1f}s, "
            f"run key `{report.run_key}`, exit code {report.exit_code}"
        ),
    )


class LineBatcher:
    """Sends the output lines of command ``label`` to ``logger`` in batches (thread-safe).

    One record carries up to ``max_lines`` lines (each still prefixed ``label |`` or ``label stderr |``), sent
    when it is full or ``flush_s`` seconds after its first line arrived, whichever comes first; ``close()``
    sends the rest. A record per line costs about a millisecond with Prefect's console and API handlers.
    """

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any], label: str, *,
                 max_lines: int = 200, flush_s: float = 0.2) -> None:
        self.logger = logger
        self.label = label
        self.max_lines = max_lines
        self.flush_s = flush_s
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._timer: threading.Timer | None = None
        self._closed = False

    def __call__(self, stream: str, line: str) -> None:
        kind = "" if stream == "stdout" else "stderr "
        body = line.rstrip("\n")
        text = f"{self.label} {kind}| {body}"
        with self._lock:  # records are sent under the lock, so batches keep the lines' order
            self._lines.append(text)
            if len(self._lines) >= self.max_lines or self._closed:
                self._send(self._take())
            elif self._timer is None:
                self._timer = threading.Timer(self.flush_s, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def _take(self) -> list[str]:
        batch, self._lines = self._lines, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return batch

    def _send(self, batch: list[str]) -> None:
        if batch:
            self.logger.info("%s", "\n".join(batch))

    def flush(self) -> None:
        """Send the lines waiting now."""
        with self._lock:
            self._send(self._take())

    def close(self) -> None:
        """Send the rest; a line that still arrives later is sent at once."""
        with self._lock:
            self._closed = True
            self._send(self._take())


def line_logger(logger: logging.Logger | logging.LoggerAdapter[Any], label: str) -> LineBatcher:
    """A sink that sends the output lines of command ``label`` to ``logger``, batched (``LineBatcher``)."""
    return LineBatcher(logger, label)
