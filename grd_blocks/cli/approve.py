"""`grd approve FLOW_RUN_ID (--minutes N | --reject) --reason TEXT [--approver NAME]`: answer a paused run.

Invariant: it sends exactly the form the Prefect UI shows for a run paused in ``require_approval`` (approve,
max_minutes, reason, approver) to the Prefect API at ``PREFECT_API_URL``; the paused run records the
decision in its store's ledger and audit artifact, so a terminal approval and a UI approval are
indistinguishable but for who gave it.
"""

from __future__ import annotations

import argparse
import getpass
import socket

__all__ = ["register"]


def _default_approver() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (container without passwd entry)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _approve(args: argparse.Namespace) -> int:
    from grd_blocks.prefect_edge.approval import approve_flow_run

    approve_flow_run(args.flow_run_id, minutes=args.minutes, reason=args.reason,
                     approver=args.approver or _default_approver(), reject=args.reject)
    verdict = "rejected" if args.reject else f"approved for up to {args.minutes} min"  # minutes checked there
    print(f"flow run {args.flow_run_id}: {verdict}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `grd approve` to the `grd` parser."""
    parser = subparsers.add_parser(
        "approve",
        help="approve (or reject) a run paused for long-run approval",
        description="Answer a flow run paused because its estimate exceeds its default budget. Uses the "
        "Prefect API at PREFECT_API_URL. The decision holds for the run key and its retries.",
    )
    parser.add_argument("flow_run_id", metavar="FLOW_RUN_ID", help="the paused flow run's id")
    parser.add_argument("--minutes", type=int, default=None,
                        help="the longest the run may take, in minutes (to approve; --reject needs none)")
    parser.add_argument("--reason", required=True, help="why (kept in the run's audit artifact)")
    parser.add_argument("--approver", default=None, help="your name (default: user@host)")
    parser.add_argument("--reject", action="store_true", help="refuse the run; it ends with your reason")
    parser.set_defaults(func=_approve)
