"""`grd approve`, `grd store` and `grd checkpoints` mistakes: exit 2, one line, no traceback; `--reject`
needs no minutes; no Prefect shutdown noise after `grd checkpoints`."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from grd_blocks.checkpoint import CheckpointEngine
from tests.cli.helpers import run_grd


def _one_line(proc_stderr: str) -> str:
    lines = proc_stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc_stderr, proc_stderr
    return lines[0]


def test_reject_needs_no_minutes_and_approve_does(tmp_path: Path, api_url: str) -> None:
    run_id = str(uuid.uuid4())
    rejected = run_grd(tmp_path, "approve", run_id, "--reject", "--reason", "too long", api_url=api_url)
    assert rejected.returncode == 2  # it got past its arguments to the API: there is no such paused run
    assert _one_line(rejected.stderr) == (
        f"grd approve: no flow run {run_id} at this Prefect API; check PREFECT_API_URL"
    )
    approved = run_grd(tmp_path, "approve", run_id, "--reason", "ok", api_url=api_url)
    assert approved.returncode == 2 and "--minutes is missing" in _one_line(approved.stderr)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["approve", "not-a-uuid", "--minutes", "5", "--reason", "x"], "is not a UUID"),
        (["approve", str(uuid.UUID(int=1)), "--minutes", "0", "--reason", "x"], "must be at least 1"),
        (["approve", str(uuid.UUID(int=1)), "--minutes", "five", "--reason", "x"], "invalid int value"),
        (["checkpoints", "ls", "zz://::garbage"], "cannot be opened (Protocol not known"),
        (["checkpoints", "show", "./a-file", "run"], "Not a directory"),
        (["checkpoints", "rm", "./ck", "r", "--step", "-1", "--yes"], "invalid"),
        (["store", "create", "x", "zz://::garbage"], "cannot be opened"),
        (["checkpoints", "frobnicate"], "invalid choice"),
    ],
)
def test_a_mistake_in_any_subcommand_is_one_line_without_a_traceback(
    tmp_path: Path, api_url: str, args: list[str], words: str
) -> None:
    (tmp_path / "a-file").write_text("x")
    CheckpointEngine(str(tmp_path / "ck")).save_checkpoint("r", state={"s": 1}, step=0)
    proc = run_grd(tmp_path, *args, api_url=api_url)
    assert proc.returncode in (1, 2) and words in _one_line(proc.stderr), proc.stderr


def test_checkpoints_of_a_block_print_no_prefect_shutdown_noise(tmp_path: Path, api_url: str) -> None:
    name = f"noise-{uuid.uuid4().hex[:8]}"
    created = run_grd(tmp_path, "store", "create", name, str(tmp_path / "ck"), api_url=api_url)
    assert created.returncode == 0, created.stderr
    CheckpointEngine(str(tmp_path / "ck")).save_checkpoint("r", state={"s": 1}, step=0)
    listed = run_grd(tmp_path, "checkpoints", "ls", name, api_url=api_url)
    assert listed.returncode == 0 and listed.stdout.strip() == "r" and listed.stderr == "", listed.stderr
    missing = run_grd(tmp_path, "checkpoints", "show", name, "nokey", api_url=api_url)
    assert missing.returncode == 2
    assert _one_line(missing.stderr) == f"grd: error: run {tmp_path / 'ck'}/nokey has no committed checkpoint"
