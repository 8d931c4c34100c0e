"""Prefect events grd emits, so automations can react to checkpoints, timeouts, completions and resumes.

Invariant: every grd event is named ``grd.<noun>.<verb>`` from ``EVENT_NAMES``, concerns the resource
``grd.run.<run_key>`` (labels ``grd.run-key`` and any extra ones given), and, inside a flow run, lists that
flow run as a related resource (role ``flow-run``) so it shows on the run's page. Emitting never raises:
events are best-effort telemetry, a failure is logged once per call and the run goes on.

Event names:
- ``grd.checkpoint.committed`` a checkpoint's MANIFEST and LATEST.json were written (payload: url, unit,
  index, metrics, size_bytes)
- ``grd.phase.completed`` a benchmark phase ended, whatever its status (payload: phase, status, elapsed_s,
  counts per command status, and the commands that did not complete with their status, at most
  ``MAX_LISTED``)
- ``grd.command.failed`` a command ended FAILED (payload: phase, command, returncode, elapsed_s, reason)
- ``grd.command.timed_out`` a command was stopped at its deadline (payload: phase, command, level,
  configured_s, effective_s, term_sent_s, kill_sent_s, survivors)

A command that completes gets no event of its own: Prefect's own ``prefect.task-run.Completed`` (task run
``phase.command``) already says so, and one more event per command would cost every command about a
millisecond of the flow's CPU and the API server's (measured by ``bench/bench_overhead.py``); its phase's
``grd.phase.completed`` counts it.
- ``grd.run.resumed`` an attempt continued from earlier work (payload: attempt, skipped commands or the
  checkpoint it resumed from)
- ``grd.approval.requested`` / ``grd.approval.decided`` the long-run approval (payload: estimate_s, limit_s,
  who, reason, approved)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from grd_blocks.errors import UsageError

__all__ = [
    "EVENT_NAMES",
    "checkpoint_committed",
    "command_failed",
    "command_timed_out",
    "emit_grd_event",
    "flow_run_related",
    "phase_completed",
    "run_resource_id",
    "run_resumed",
]

logger = logging.getLogger(__name__)

MAX_LISTED = 100
"""At most this many commands are named in a ``grd.phase.completed`` payload (events stay small)."""

EVENT_NAMES: frozenset[str] = frozenset(
    {
        "grd.checkpoint.committed",
        "grd.phase.completed",
        "grd.command.failed",
        "grd.command.timed_out",
        "grd.run.resumed",
        "grd.approval.requested",
        "grd.approval.decided",
    }
)


def run_resource_id(run_key: str) -> str:
    """The Prefect resource id of a grd run: ``grd.run.<run_key>``."""
    return f"grd.run.{run_key}"


def flow_run_related() -> list[dict[str, str]]:
    """The current flow run as a related resource, or [] outside a flow run."""
    from prefect.runtime import flow_run

    flow_run_id = flow_run.id
    if not flow_run_id:
        return []
    related = {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}
    name = flow_run.name
    if name:
        related["prefect.resource.name"] = str(name)
    return [related]


def emit_grd_event(
    event: str,
    run_key: str,
    *,
    payload: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    related: list[dict[str, str]] | None = None,
) -> str | None:
    """Emit ``event`` about run ``run_key``; returns the event id, or None when nothing was sent.

    ``labels`` are added to the resource (e.g. ``{"grd.phase": "train"}``); ``related`` to the flow run link.
    Raises ``UsageError`` only for a name outside ``EVENT_NAMES`` (a programming error, not a runtime one).
    """
    if event not in EVENT_NAMES:
        raise UsageError(
            f"event name {event!r} is not a grd event; use one of {sorted(EVENT_NAMES)} "
            "(documented in grd_blocks.prefect_edge.events)"
        )
    try:
        from prefect.events import emit_event

        resource = {
            "prefect.resource.id": run_resource_id(run_key),
            "prefect.resource.name": run_key,
            "grd.run-key": run_key,
            **{k: str(v) for k, v in (labels or {}).items()},
        }
        sent = emit_event(
            event=event,
            resource=resource,
            related=[*flow_run_related(), *(related or [])],
            payload=dict(payload or {}),
        )
    except Exception as exc:  # telemetry must never stop a run
        logger.warning("could not emit %s for run %s (%s); the run goes on", event, run_key, exc)
        return None
    return str(sent.id) if sent is not None else None


def checkpoint_committed(run_key: str, ref: Any) -> str | None:
    """``grd.checkpoint.committed`` for a ``CheckpointRef``."""
    return emit_grd_event(
        "grd.checkpoint.committed",
        run_key,
        payload={
            "url": ref.url,
            "unit": ref.unit,
            "index": ref.index,
            "metrics": dict(ref.metrics),
            "size_bytes": ref.size_bytes,
        },
        labels={"grd.checkpoint.unit": str(ref.unit), "grd.checkpoint.index": str(ref.index)},
    )


def phase_completed(run_key: str, phase: str, *, status: str, elapsed_s: float,
                    commands: Mapping[str, str]) -> str | None:
    """``grd.phase.completed`` for a phase that ran; ``commands`` maps each command to its final status."""
    counts: dict[str, int] = {}
    for command_status in commands.values():
        counts[command_status] = counts.get(command_status, 0) + 1
    others = [f"{name}: {command_status}" for name, command_status in commands.items()
              if command_status != "COMPLETED"]
    return emit_grd_event(
        "grd.phase.completed",
        run_key,
        payload={"phase": phase, "status": status, "elapsed_s": elapsed_s, "counts": counts,
                 "not_completed": others[:MAX_LISTED], "not_completed_truncated": len(others) > MAX_LISTED},
        labels={"grd.phase": phase, "grd.status": status},
    )


def command_failed(run_key: str, phase: str, command: str, *, returncode: int | None, elapsed_s: float,
                   reason: str | None) -> str | None:
    """``grd.command.failed`` for a command that ended FAILED (non-zero exit, or it could not start)."""
    return emit_grd_event(
        "grd.command.failed",
        run_key,
        payload={"phase": phase, "command": command, "returncode": returncode, "elapsed_s": elapsed_s,
                 "reason": reason},
        labels={"grd.phase": phase, "grd.command": command},
    )


def command_timed_out(run_key: str, phase: str, command: str, *, timeout: Mapping[str, Any]) -> str | None:
    """``grd.command.timed_out``; ``timeout`` is the report's timeout block (level, configured_s, ...)."""
    return emit_grd_event(
        "grd.command.timed_out",
        run_key,
        payload={"phase": phase, "command": command, **dict(timeout)},
        labels={"grd.phase": phase, "grd.command": command, "grd.level": str(timeout.get("level", ""))},
    )


def run_resumed(run_key: str, *, attempt: int, detail: Mapping[str, Any] | None = None) -> str | None:
    """``grd.run.resumed``: attempt ``attempt`` continues earlier work (``detail``: what it reused)."""
    return emit_grd_event("grd.run.resumed", run_key, payload={"attempt": attempt, **dict(detail or {})})
