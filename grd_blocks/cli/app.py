"""The `grd` parser and dispatch: `grd run`, `grd store`, `grd checkpoints`, `grd approve`.

Invariant: every subcommand is a handler ``func(args) -> exit code`` registered by its module; an error a
handler raises ends as one line and the exit code ``status.exit_code_for`` gives it (the package docstring
lists the codes); a usage error argparse finds is one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from grd_blocks.cli import approve, run, store
from grd_blocks.cli.exits import Handler, end_with, one_line
from grd_blocks.orchestration.status import EXIT_USAGE
from grd_blocks.timeline import mark

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line (and which its subparsers inherit)."""

    def error(self, message: str) -> NoReturn:
        line = one_line(f"{self.prog}: error: {message} (see `{self.prog} --help`)")
        self.exit(EXIT_USAGE, line + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The `grd` parser with `run` and every registered subcommand."""
    parser: argparse.ArgumentParser = _Parser(
        prog="grd", description="Nested budgets, checkpoints and resuming retries for long Prefect jobs."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    run.register(subparsers)
    store.register(subparsers)
    approve.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `grd` script; returns the exit code."""
    mark("cli")
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # Prefect's events worker reports its queue while draining at exit ("Still processing items: ..."), on
    # stderr and without a newline before ours: nothing a grd user can act on
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)
    try:
        return func(args)
    except BaseException as exc:
        return end_with(f"grd {args.command}", exc)
