"""The `grd` command line: `grd run SPEC.yaml`, `grd store create`, `grd checkpoints ls|show|verify|rm`,
`grd approve`.

Invariant: exit codes are the benchmark's for `grd run` (0 completed, 1 failed, 124 timed out and nothing
failed; 130 / 143 when Ctrl-C / SIGTERM stopped it, as the report's ``exit_code`` says), and for every
subcommand 2 when its input is wrong and 1 when the work or the store failed, decided in one place
(orchestration/status.py; exits.py prints the line). Every user mistake is one line on stderr naming the file,
line and key or the flag, the problem and the fix, without a traceback; `grd run` finds its mistakes (the
spec, every flag: preflight.py) before the first command runs.
"""

from grd_blocks.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
