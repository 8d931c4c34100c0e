"""`grd run SPEC.yaml`: the benchmark flow from a shell, its report summarised, its exit code the benchmark's.

Invariant: the spec and every flag are checked (preflight.py) before any Prefect API starts or any command
runs; the exit code is the report's ``exit_code`` (0 completed, 1 failed or progress lost, 124 timed out and
nothing failed), 130 / 143 when Ctrl-C / SIGTERM stopped the run, with one line saying how to resume; 1 with
one line naming the server and the limit when the Prefect API stayed unreachable past its retry window.
`grd run` uses the Prefect API at ``PREFECT_API_URL`` when set, else an ephemeral one started (and guarded)
for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.orchestration.status import EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM, interrupt_exit_code
from grd_blocks.timeline import mark

__all__ = ["register"]


def _written(report: Path) -> tuple[str, int | None]:
    """(run key, exit code) the written ``report`` records; ("RUN_KEY", None) where it cannot be read."""
    try:
        written = json.loads(report.read_text(encoding="utf-8"))
        return str(written["run_key"]), int(written["exit_code"])
    except (OSError, ValueError, KeyError, TypeError):
        return "RUN_KEY", None


def _kept_line(report: Path, key: str, code: int, spec_path: Path) -> str:
    return (f"exit code {code}; report {report} records what finished; resume with "
            f"`grd run {spec_path} --resume {key}`")


def _stopped(code: int, spec_path: Path) -> int:
    """The one line `grd run` prints when a signal stopped it; returns the exit code: the written report's
    (whichever signal came later, the report says the code grd exits with), else ``code`` (130 or 143)."""
    from grd_blocks.report import last_written

    report = last_written()
    key = "RUN_KEY"
    if report is not None:
        key, written = _written(report)
        code = code if written is None else written
    _exit_at_once_on_signals(code)
    what = "Ctrl-C (SIGINT)" if code == EXIT_SIGINT else (
        f"signal {signal.Signals(code - 128).name}" if code > 128 else "a signal after the run ended")
    if report is None:
        print(f"grd run: stopped by {what} before the benchmark started; exit code {code}", file=sys.stderr)
        return code
    print(f"grd run: stopped by {what}; {_kept_line(report, key, code, spec_path)}", file=sys.stderr)
    return code


def _api_gone(exc: Exception, spec_path: Path) -> bool:
    """If ``exc`` says the Prefect API stopped answering: the one line saying so (the server, the limit,
    what the written report keeps, how to resume) and True; else False (not an outage: not ours to word)."""
    from grd_blocks.prefect_edge.api_outage import outage_line, unreachable
    from grd_blocks.report import last_written

    if not unreachable(exc):
        return False
    _exit_at_once_on_signals(EXIT_FAILED)
    report = last_written()
    if report is None:
        print(f"grd run: {outage_line(exc)}; nothing was run; exit code {EXIT_FAILED}", file=sys.stderr)
        return True
    key, _ = _written(report)
    print(f"grd run: {outage_line(exc)}; {_kept_line(report, key, EXIT_FAILED, spec_path)}", file=sys.stderr)
    return True


def _exit_at_once_on_signals(code: int) -> None:
    """From now on the outcome is final: a further Ctrl-C or SIGTERM (during the summary or Prefect's
    shutdown) ends grd at once with ``code``, the code its report says; the guardian stops the API server and
    the keepers what is left of the commands."""
    def finish(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, finish)


def _is_url(store: str | None) -> bool:
    from grd_blocks.prefect_edge.block import looks_like_url

    return store is not None and looks_like_url(store)


def _checked_store(args: argparse.Namespace) -> CheckpointEngine:
    """``--store``'s engine once it was probed (preflight.py)."""
    from grd_blocks.cli.preflight import check_store

    return check_store(args.store)


def _run(args: argparse.Namespace) -> int:
    from grd_blocks.cli.preflight import check_report, check_run_keys
    from grd_blocks.spec import load_spec

    spec_path = Path(args.spec)
    load_spec(spec_path)  # a bad spec fails here, before any server starts
    check_run_keys(args.run_key, args.resume)
    check_report(args.report)
    mark("spec")
    from grd_blocks.prefect_edge.cli_run import (
        benchmark_flow,
        prefect_settings,
        set_default_environment,
        sigterm_raises,
    )

    set_default_environment()  # before the first import of prefect, where possible
    from grd_blocks.prefect_edge.run_end import report_of
    from grd_blocks.report import BenchmarkReport, render_summary

    with prefect_settings(), sigterm_raises(), contextlib.ExitStack() as api:
        mark("prefect")
        try:
            engine = _checked_store(args) if _is_url(args.store) else None  # needs no API: before it starts
            mark("store")
            if not (args.check and engine is not None):
                from grd_blocks.prefect_edge.ephemeral import guarded_ephemeral_api

                startup = os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"].strip()
                api.enter_context(guarded_ephemeral_api(int(startup) if startup.isdigit() else None))
            mark("api")
            if engine is None:
                engine = _checked_store(args)  # a block name, or the default block: through the API
            if args.check:
                print(f"grd run: {spec_path}: the spec and every flag are fine (store {engine.url} "
                      "writable); nothing was run")
                return 0
            flow = benchmark_flow()
            mark("flow_module")
            state = flow(
                spec_path=str(spec_path),
                run_key=args.run_key,
                resume_from=args.resume,
                store=args.store,
                timeouts=not args.no_timeouts,
                report_path=args.report,
                return_state=True,
            )
            mark("flow_end")
        except BaseException as exc:
            code = interrupt_exit_code(exc)
            if code is not None:
                return _stopped(code, spec_path)
            if isinstance(exc, Exception) and _api_gone(exc, spec_path):
                return EXIT_FAILED
            raise
        data = report_of(state.result(raise_on_failure=False))  # a run that did not complete: its report
    if isinstance(data, Exception) and _api_gone(data, spec_path):
        return EXIT_FAILED
    if isinstance(data, BaseException):
        raise data
    if not isinstance(data, (BenchmarkReport, dict)):  # a dict: a report a flow run persisted as JSON
        print(f"grd run: the benchmark flow ended as {state.name} without a report: {state.message}",
              file=sys.stderr)
        return EXIT_FAILED
    report = BenchmarkReport.model_validate(data)
    _exit_at_once_on_signals(report.exit_code)
    print(render_summary(report))
    if report.exit_code in (EXIT_SIGINT, EXIT_SIGTERM):  # a signal stopped it: the flow ended it Cancelled
        return _stopped(report.exit_code, spec_path)
    where = args.report or f"reports/{report.run_key}/report.json"
    print(f"report: {where}")
    mark("summary")
    return report.exit_code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `grd run` to the `grd` parser."""
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
