"""The `grd` command line: `grd run SPEC.yaml` plus the subcommands other modules register.

Invariant: exit codes are the benchmark's (0 completed, 1 failed, 124 timed out and nothing failed) and 2 for
a bad spec or usage, whose message (file, line, key, fix) goes to stderr without a traceback. `grd run` uses
the Prefect API at ``PREFECT_API_URL`` when set, else an ephemeral one started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grd_blocks import cli_approve, cli_store
from grd_blocks.errors import ConfigError, DurationError, GrdError, InvalidRunKey, SpecError, UsageError
from grd_blocks.orchestration.status import EXIT_FAILED, EXIT_USAGE

__all__ = ["build_parser", "main"]

# The one place the library reaches the flows package: looked up at run time, never imported statically.
BENCHMARK_FLOW = "flows.benchmark:benchmark"
_USAGE_ERRORS = (SpecError, UsageError, DurationError, InvalidRunKey, ConfigError)
_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def _prefect_settings() -> contextlib.AbstractContextManager[object]:
    """Defaults for the ephemeral API (a user's environment wins), in the environment for child processes and
    as temporary settings, in case Prefect read its settings before (an earlier import of prefect)."""
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    for name, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    startup = os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]
    analytics = os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"].strip().lower() in ("1", "true", "yes", "on")
    updates: dict[Any, Any] = {PREFECT_SERVER_ANALYTICS_ENABLED: analytics}
    if startup.strip().isdigit():
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = int(startup)
    return temporary_settings(updates=updates)


def _load_flow() -> Callable[..., Any]:
    module, _, attr = BENCHMARK_FLOW.partition(":")
    flow: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return flow


def _run(args: argparse.Namespace) -> int:
    from grd_blocks.orchestration.runkey import validate_run_key
    from grd_blocks.spec import load_spec

    spec_path = Path(args.spec)
    load_spec(spec_path)  # a bad spec fails here, before any server starts
    for key in (args.run_key, args.resume):
        if key is not None:
            validate_run_key(key)
    if args.run_key and args.resume and args.run_key != args.resume:
        raise UsageError(f"--run-key {args.run_key!r} and --resume {args.resume!r} differ; pass one of them")
    for name, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)  # before the first import of prefect, where possible
    from grd_blocks.prefect_edge.run_end import report_of
    from grd_blocks.report import BenchmarkReport, render_summary

    with _prefect_settings():
        from grd_blocks.prefect_edge.ephemeral import start_guarded_ephemeral_api

        startup = os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"].strip()
        start_guarded_ephemeral_api(int(startup) if startup.isdigit() else None)
        state = _load_flow()(
            spec_path=str(spec_path),
            run_key=args.run_key,
            resume_from=args.resume,
            store=args.store,
            timeouts=not args.no_timeouts,
            report_path=args.report,
            return_state=True,
        )
        data = report_of(state.result(raise_on_failure=False))  # a run that did not complete: its report
    if isinstance(data, BaseException):
        raise data
    if not isinstance(data, dict):
        print(f"grd run: the benchmark flow ended as {state.name} without a report: {state.message}",
              file=sys.stderr)
        return EXIT_FAILED
    report = BenchmarkReport.model_validate(data)
    print(render_summary(report))
    where = args.report or f"reports/{report.run_key}/report.json"
    print(f"report: {where}")
    return report.exit_code


def _register_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run",
        help="run a benchmark spec as a Prefect flow and write its JSON report",
        description="Run SPEC.yaml (benchmark -> phases -> commands) under nested budgets. Exit code: 0 all "
        "completed, 1 something failed, 124 something timed out and nothing failed, 2 bad spec or usage.",
    )
    run.add_argument("spec", metavar="SPEC.yaml", help="the benchmark spec")
    run.add_argument("--report", metavar="FILE", help="write the JSON report here "
                     "(default reports/<run_key>/report.json); command logs go to <its dir>/<run_key>/")
    run.add_argument("--store", metavar="NAME|URL", help="checkpoint store: a saved CheckpointStore block's "
                     "name or a URL (default ./checkpoints)")
    run.add_argument("--run-key", metavar="KEY", help="run identity (default: the flow run id)")
    run.add_argument("--resume", metavar="RUN_KEY", help="resume that run: skip its completed commands")
    run.add_argument("--no-timeouts", action="store_true", help="disable every deadline (for debugging)")
    run.set_defaults(func=_run)


def build_parser() -> argparse.ArgumentParser:
    """The `grd` parser with `run` and every registered subcommand."""
    parser = argparse.ArgumentParser(prog="grd", description="Nested budgets, checkpoints and resuming "
                                     "retries for long Prefect jobs.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register_run(subparsers)
    cli_store.register(subparsers)
    cli_approve.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `grd` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return func(args)
    except _USAGE_ERRORS as exc:
        print(f"grd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GrdError as exc:
        print(f"grd {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
