"""`grd checkpoints ls|show|verify|rm` against a local store (block names are tested in tests/blocks)."""

from __future__ import annotations

import argparse
import pathlib

import pytest
import torch

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.cli.store import register


def _grd(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grd")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def store(tmp_path: pathlib.Path) -> str:
    url = str(tmp_path / "ck")
    engine = CheckpointEngine(url)
    for step in range(3):
        engine.save_checkpoint(
            "r1", state={"w": torch.zeros(5000)}, step=step, metrics={"loss": 1 / (step + 1)}
        )
    return url


def test_ls_lists_runs_and_checkpoints_with_sizes_and_metrics(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _grd(["checkpoints", "ls", store]) == 0
    assert capsys.readouterr().out.strip() == "r1"
    assert _grd(["checkpoints", "ls", store, "r1", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "step_2*" in out and "21.0 KiB" in out and "loss=0.5" in out and out.count(" ok") == 3


def test_verify_reports_damage_and_exits_1(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    payload = pathlib.Path(store) / "r1" / "step_1" / "state.pt"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0x01
    payload.write_bytes(bytes(data))
    assert _grd(["checkpoints", "verify", store, "r1"]) == 1
    out = capsys.readouterr().out
    assert "step_1" in out and "DAMAGED" in out and " digest " in out
    assert _grd(["checkpoints", "show", store, "r1", "--step", "1"]) == 1


def test_rm_needs_yes_and_deletes_one(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _grd(["checkpoints", "rm", store, "r1", "--step", "2"]) == 2
    assert "without --yes" in capsys.readouterr().err
    assert _grd(["checkpoints", "rm", store, "r1", "--step", "2", "--yes"]) == 0
    assert _grd(["checkpoints", "show", store, "r1"]) == 0
    assert "step_1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["checkpoints", "ls", "STORE", "bad key"],
        ["checkpoints", "show", "STORE", "r1", "--step", "99"],
        ["checkpoints", "rm", "STORE", "r1", "--yes"],
    ],
)
def test_bad_input_is_a_clear_error_with_exit_2(
    store: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _grd([store if a == "STORE" else a for a in argv]) == 2
    assert capsys.readouterr().err.startswith("grd: error: ")
