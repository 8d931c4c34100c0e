"""The approval ledger of one run key: every approval request and decision, kept in the checkpoint store.

Invariant: the ledger lives at ``{store}/{run_key}/approval`` and each change commits the WHOLE history as
one JSON checkpoint (step = number of records) through the store's commit protocol, so a reader sees either
the old history or the new one, never half; a decision (``approved`` / ``rejected``) once committed is the
run key's decision for every later attempt, retry and worker that can reach the same store. No Prefect here,
and no store either: the ledger writes through any ``LedgerPrefix`` (a ``RunCheckpoints``); the edge opens it
(``prefect_edge/ledger.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "DECISIONS",
    "LEDGER_PREFIX",
    "ApprovalLedger",
    "ApprovalRecord",
    "LedgerPrefix",
    "RecordKind",
    "utc_now",
]

RecordKind = Literal["requested", "approved", "rejected", "reused", "expired"]
DECISIONS: frozenset[str] = frozenset({"approved", "rejected"})
LEDGER_PREFIX = "approval"


def utc_now() -> str:
    """The current time as ISO 8601 UTC with seconds, e.g. ``2026-11-23T04:05:06Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ApprovalRecord:
    """One line of the audit: a request, a decision, a reuse of an earlier decision, or an expired request."""

    kind: RecordKind
    at: str
    who: str
    estimate_s: float
    limit_s: float | None
    reason: str
    flow_run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ApprovalRecord:
        limit = data.get("limit_s")
        return cls(
            kind=data["kind"],
            at=str(data["at"]),
            who=str(data.get("who", "")),
            estimate_s=float(data.get("estimate_s", 0.0)),
            limit_s=None if limit is None else float(limit),
            reason=str(data.get("reason", "")),
            flow_run_id=data.get("flow_run_id"),
        )


class LedgerPrefix(Protocol):
    """The part of ``RunCheckpoints`` the ledger uses."""

    url: str

    def save(self, state: Mapping[str, Any], *, step: int | None = None) -> object: ...
    def latest(self) -> object | None: ...
    def load(self) -> dict[str, Any] | None: ...


class ApprovalLedger:
    """Reads and appends the approval records of one run key under ``prefix``."""

    def __init__(self, prefix: LedgerPrefix, run_key: str) -> None:
        self.prefix = prefix
        self.run_key = run_key

    @property
    def url(self) -> str:
        return self.prefix.url

    def records(self) -> list[ApprovalRecord]:
        """Every record committed so far, oldest first ([] when the run key was never asked)."""
        if self.prefix.latest() is None:
            return []
        state = self.prefix.load() or {}
        return [ApprovalRecord.from_json(item) for item in state.get("records", [])]

    def decision(self) -> ApprovalRecord | None:
        """The newest ``approved`` or ``rejected`` record, or None if nobody has decided yet."""
        for record in reversed(self.records()):
            if record.kind in DECISIONS:
                return record
        return None

    def append(self, record: ApprovalRecord) -> list[ApprovalRecord]:
        """Commit the history plus ``record``; returns the new history."""
        history = [*self.records(), record]
        state = {"run_key": self.run_key, "records": [r.to_json() for r in history]}
        self.prefix.save(state, step=len(history))
        return history
