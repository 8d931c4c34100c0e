"""The `grd` command line: `grd run SPEC.yaml` plus the subcommands other modules register.

Invariant: exit codes are the benchmark's (0 completed, 1 failed, 124 timed out and nothing failed), 130 /
143 when Ctrl-C (SIGINT) / SIGTERM stopped it (the report's ``exit_code`` says the same), and 2 for a bad
spec or usage. Every user mistake, in any subcommand, is one line on stderr naming the file, line and key or
the flag, the problem and the fix, without a traceback; `grd run` finds its mistakes (the spec, every flag:
cli_preflight.py) before the first command runs. `grd run` uses the Prefect API at ``PREFECT_API_URL``
when set, else an ephemeral one started for the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from grd_blocks import cli_approve, cli_store
from grd_blocks.errors import ConfigError, DurationError, GrdError, InvalidRunKey, SpecError, UsageError
from grd_blocks.orchestration.status import EXIT_FAILED, EXIT_SIGINT, EXIT_USAGE, interrupt_exit_code

__all__ = ["build_parser", "main"]

_USAGE_ERRORS = (SpecError, UsageError, DurationError, InvalidRunKey, ConfigError)
def _stopped(code: int, spec_path: Path) -> int:
    """The one line `grd run` prints when a signal stopped it; returns ``code`` (130 or 143)."""
    from grd_blocks.report import last_written

    what = "Ctrl-C (SIGINT)" if code == EXIT_SIGINT else f"signal {signal.Signals(code - 128).name}"
    report = last_written()
    if report is None:
        print(f"grd run: stopped by {what} before the benchmark started; exit code {code}", file=sys.stderr)
        return code
    try:
        key = json.loads(report.read_text(encoding="utf-8"))["run_key"]
    except (OSError, ValueError, KeyError):
        key = "RUN_KEY"
    print(f"grd run: stopped by {what}; exit code {code}; report {report} records what finished; resume with "
          f"`grd run {spec_path} --resume {key}`", file=sys.stderr)
    return code


def _is_url(store: str | None) -> bool:
    from grd_blocks.prefect_edge.block import looks_like_url

    return store is not None and looks_like_url(store)


def _checked_store(args: argparse.Namespace) -> Any:
    """``--store``'s engine once it was probed (cli_preflight)."""
    from grd_blocks.cli_preflight import check_store

    return check_store(args.store)


def _run(args: argparse.Namespace) -> int:
    from grd_blocks.cli_preflight import check_report, check_run_keys
    from grd_blocks.spec import load_spec

    spec_path = Path(args.spec)
    load_spec(spec_path)  # a bad spec fails here, before any server starts
    check_run_keys(args.run_key, args.resume)
    check_report(args.report)
    from grd_blocks.prefect_edge.cli_run import (
        benchmark_flow,
        prefect_settings,
        set_default_environment,
        sigterm_raises,
    )

    set_default_environment()  # before the first import of prefect, where possible
    from grd_blocks.prefect_edge.run_end import report_of
    from grd_blocks.report import BenchmarkReport, render_summary

    with prefect_settings(), sigterm_raises():
        try:
            engine = _checked_store(args) if _is_url(args.store) else None  # needs no API: before it starts
            if not (args.check and engine is not None):
                from grd_blocks.prefect_edge.ephemeral import start_guarded_ephemeral_api

                startup = os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"].strip()
                start_guarded_ephemeral_api(int(startup) if startup.isdigit() else None)
            if engine is None:
                engine = _checked_store(args)  # a block name, or the default block: through the API
            if args.check:
                print(f"grd run: {spec_path}: the spec and every flag are fine (store {engine.url} "
                      "writable); nothing was run")
                return 0
            state = benchmark_flow()(
                spec_path=str(spec_path),
                run_key=args.run_key,
                resume_from=args.resume,
                store=args.store,
                timeouts=not args.no_timeouts,
                report_path=args.report,
                return_state=True,
            )
        except BaseException as exc:
            code = interrupt_exit_code(exc)
            if code is None:
                raise
            return _stopped(code, spec_path)
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
        "completed, 1 something failed (or its progress could not be committed), 124 something timed out and "
        "nothing failed, 2 bad spec or usage, 130 stopped by Ctrl-C, 143 stopped by SIGTERM.",
    )
    run.add_argument("spec", metavar="SPEC.yaml", help="the benchmark spec")
    run.add_argument("--report", metavar="FILE", help="write the JSON report here "
                     "(default reports/<run_key>/report.json); command logs go to <its dir>/<run_key>/")
    run.add_argument("--store", metavar="NAME|URL", help="checkpoint store: a saved CheckpointStore block's "
                     "name or a URL (default ./checkpoints)")
    run.add_argument("--run-key", metavar="KEY", help="run identity (default: the flow run id)")
    run.add_argument("--resume", metavar="RUN_KEY", help="resume that run: skip its completed commands")
    run.add_argument("--no-timeouts", action="store_true", help="disable every deadline (for debugging)")
    run.add_argument("--check", action="store_true", help="check the spec and every flag (the store is "
                     "written and the report path created), then exit 0 without running anything")
    run.set_defaults(func=_run)


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line (and which its subparsers inherit)."""

    def error(self, message: str) -> NoReturn:
        line = cli_store.one_line(f"{self.prog}: error: {message} (see `{self.prog} --help`)")
        self.exit(EXIT_USAGE, line + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The `grd` parser with `run` and every registered subcommand."""
    parser: argparse.ArgumentParser = _Parser(
        prog="grd", description="Nested budgets, checkpoints and resuming retries for long Prefect jobs."
    )
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
    # Prefect's events worker reports its queue while draining at exit ("Still processing items: ..."), on
    # stderr and without a newline before ours: nothing a grd user can act on
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)
    try:
        return func(args)
    except _USAGE_ERRORS as exc:
        print(f"grd {args.command}: {cli_store.one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except GrdError as exc:
        print(f"grd {args.command}: {cli_store.one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"grd {args.command}: interrupted (Ctrl-C); exit code {EXIT_SIGINT}", file=sys.stderr)
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
