"""How every `grd` subcommand ends on an error: one line on stderr and one exit code.

Invariant: the code is ``status.exit_code_for``'s (every exit code grd uses is decided in
``orchestration/status.py``); an error it gives no code is a bug in grd and keeps its traceback. A message is
printed as one line: control characters (a newline in a path a user typed) are written as their escapes.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from grd_blocks.orchestration.status import EXIT_USAGE, exit_code_for

__all__ = ["Handler", "end_with", "fail", "guarded", "one_line"]

Handler = Callable[[argparse.Namespace], int]


def one_line(message: str) -> str:
    """``message`` with every control character written as its escape."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)


def fail(where: str, message: str, code: int = EXIT_USAGE) -> int:
    """Print ``where: message`` as one line on stderr; return ``code``."""
    print(f"{where}: {one_line(message)}", file=sys.stderr)
    return code


def end_with(where: str, exc: BaseException) -> int:
    """End a subcommand on ``exc``: one line (``where: message``) and ``exit_code_for``'s code; ``exc`` raised
    again when it is a bug (no code)."""
    code = exit_code_for(exc)
    if code is None:
        raise exc
    message = f"interrupted (Ctrl-C); exit code {code}" if isinstance(exc, KeyboardInterrupt) else str(exc)
    return fail(where, message, code)


def guarded(where: str) -> Callable[[Handler], Handler]:
    """A handler whose errors end through ``end_with(where, ...)``."""

    def wrap(func: Handler) -> Handler:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except Exception as exc:
                return end_with(where, exc)

        return run

    return wrap
