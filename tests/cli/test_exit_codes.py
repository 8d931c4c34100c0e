"""One table from errors to exit codes (grd_blocks/cli/exits.py), the same for every subcommand: 2 when the
input is wrong, 1 when the work or the store failed, 130 for Ctrl-C; a bug keeps its traceback."""

from __future__ import annotations

import argparse

import pytest

from grd_blocks.cli.exits import guarded
from grd_blocks.errors import (
    ApprovalRejected,
    CheckpointCorrupt,
    CheckpointNotFound,
    ConfigError,
    DurationError,
    InvalidRunKey,
    PreflightError,
    SpecError,
    StoreUnavailable,
    UsageError,
)
from grd_blocks.orchestration.status import exit_code_for


@pytest.mark.parametrize(("error", "code"), [
    (UsageError("--minutes is missing"), 2),
    (PreflightError("--report", "x", "is a directory", "name a file"), 2),
    (InvalidRunKey("a/b"), 2),
    (ConfigError("keep_last must be >= 1"), 2),
    (DurationError("an hour", "no unit"), 2),
    (SpecError("phases is missing", file="spec.yaml", line=3, key="phases"), 2),
    (CheckpointNotFound("run r has no committed checkpoint"), 2),
    (CheckpointCorrupt("step_2 is a symbolic link"), 1),
    (StoreUnavailable("s3://b: connection refused"), 1),
    (ApprovalRejected("r", who="ana", reason="too long"), 1),
    (KeyboardInterrupt(), 130),
    (RuntimeError("a bug"), None),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value))
def test_every_error_has_one_exit_code(error: BaseException, code: int | None) -> None:
    assert exit_code_for(error) == code


def test_a_guarded_handler_prints_one_line_and_a_bug_keeps_its_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    @guarded("grd: error")
    def mistaken(args: argparse.Namespace) -> int:
        raise CheckpointNotFound("run ./ck/r\nhas no committed checkpoint")

    @guarded("grd: error")
    def buggy(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug")

    assert mistaken(argparse.Namespace()) == 2
    assert capsys.readouterr().err == "grd: error: run ./ck/r\\nhas no committed checkpoint\n"
    with pytest.raises(RuntimeError):
        buggy(argparse.Namespace())
