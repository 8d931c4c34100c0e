"""How a grd flow or task run that did not complete ends in Prefect: one clear line, no traceback.

Invariants:

* A grd run that ends Failed, TimedOut or Cancelled carries a ``RunEnded`` as its state's data: the one-line
  outcome (its message) and the report (``report``). Prefect resolves a failed state's data into the
  exception it raises, so the deployed engine's ``.result()`` raises this ``RunEnded`` instead of failing
  with "TypeError: Unexpected result for failed state: {the whole report}".
* ``quiet_run_ends()`` (idempotent, once per process) drops exactly the records that repeat an outcome grd
  has already logged in one line: Prefect's "Encountered exception during execution", "Engine execution
  exited with unexpected exception" and "Execution of flow run ... exited with unexpected exception" when
  the exception is a ``RunEnded`` or an expected stop that grd logged as it raised it
  (``TrainingInterrupted``: checkpoint saved, a retry continues; ``BenchmarkIncomplete``: a retry skips
  what completed), an API that stayed unreachable (grd's own line names the server and the limit:
  api_outage.py), or Prefect's ``FailedRun`` / ``CancelledRun`` for a grd state whose data it did not keep
  (the state's message, logged as "Finished in state ...", is the outcome), and a
  grd command task's "Task run failed with state: Failed(... result=<object>)" followed by "NoneType: None"
  (the task's "Finished in state Failed('phase.command: FAILED (returncode 3, 0.4s)')" says it). Every other
  record, every other exception, passes untouched.
* A user's mistake (spec typo, unknown store, bad duration, invalid run key) or a refused approval ends the
  run with ``rejected(exc)``: one ERROR line at the start of the run and a Failed state named after the kind
  of problem (``InvalidParameters``, ``NotApproved``), so the runs list says what went wrong.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.client.schemas.objects import State
from prefect.exceptions import CancelledRun, FailedRun
from prefect.states import Failed

from grd_blocks.errors import (
    ApprovalExpired,
    ApprovalRejected,
    BenchmarkIncomplete,
    ConfigError,
    DurationError,
    GrdError,
    InvalidRunKey,
    SpecError,
    TrainingInterrupted,
    UsageError,
)
from grd_blocks.prefect_edge.api_outage import unreachable

__all__ = ["MISTAKES", "REFUSALS", "RunEnded", "quiet_run_ends", "rejected", "report_of"]

MISTAKES: tuple[type[BaseException], ...] = (SpecError, DurationError, UsageError, ConfigError, InvalidRunKey)
REFUSALS: tuple[type[BaseException], ...] = (ApprovalRejected, ApprovalExpired)
GRD_TASKS = frozenset({"grd-command"})  # task names whose outcome is their final state's message
_ENGINE_MESSAGES = ("Encountered exception during execution", "exited with unexpected exception")


class RunEnded(GrdError):
    """The data of a grd run's Failed/TimedOut/Cancelled state: its outcome line and its report (for a run
    ended by ``rejected``, the error itself)."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


def report_of(data: Any) -> Any:
    """A state's data with a ``RunEnded`` unwrapped to the report it carries."""
    return data.report if isinstance(data, RunEnded) else data


_EXPECTED = (RunEnded, TrainingInterrupted, BenchmarkIncomplete, FailedRun, CancelledRun)


class _RepeatedEnd(logging.Filter):
    """Drops Prefect's records that only repeat an outcome grd logged already (see the module invariant)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        expected = isinstance(exc, _EXPECTED) or unreachable(exc)
        if expected and any(m in str(record.msg) for m in _ENGINE_MESSAGES):
            return False
        return not (
            getattr(record, "task_name", None) in GRD_TASKS
            and str(record.msg).startswith("Task run failed with state: ")
        )


_FILTER = _RepeatedEnd()
_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine")


def quiet_run_ends() -> None:
    """Install the filter on Prefect's run and engine loggers (once; later calls do nothing)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def rejected(
    exc: BaseException, logger: logging.Logger | logging.LoggerAdapter[Any], what: str
) -> State[Any]:
    """Log ``exc`` (a mistake or a refusal) as one line and return the Failed state that ends the run."""
    kind = "NotApproved" if isinstance(exc, REFUSALS) else "InvalidParameters"
    label = "not approved" if isinstance(exc, REFUSALS) else "invalid parameters"
    message = f"{what}: {label}: {exc}"
    logger.error("%s", message)
    return Failed(name=kind, message=message, data=RunEnded(message, exc))
