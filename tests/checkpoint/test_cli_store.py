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


@pytest.fixture
def grd_run(tmp_path: pathlib.Path) -> str:
    """A store as `grd run` leaves it: run k1 with a checkpoint of its own, two commands' checkpoints saved
    where GRD_CHECKPOINT_URL points them (one with a mid-epoch save under partial/), grd's progress, and a
    second run k2."""
    from grd_blocks.checkpoint import RunCheckpoints
    from grd_blocks.orchestration.environment import StoreAccess

    url = str(tmp_path / "store")
    access = StoreAccess(url=url)
    CheckpointEngine(url).save_checkpoint("k1", state={"w": torch.ones(10)}, epoch=1)
    fit = RunCheckpoints.from_env(access.environment("k1", "commands", "train.fit"))
    for epoch in (1, 2):
        fit.save({"w": torch.zeros(100)}, epoch=epoch, metrics={"loss": 1 / epoch})
    fit.child("partial").save({"w": torch.zeros(100)}, step=7)
    RunCheckpoints.from_env(access.environment("k1", "commands", "eval.score")).save({"acc": 0.5}, step=3)
    RunCheckpoints.from_env(access.environment("k1", "progress")).save({"rows": []}, step=1)
    CheckpointEngine(url).save_checkpoint("k2", state={"w": torch.ones(1)}, step=1)
    return url


def test_ls_of_a_run_key_lists_its_own_and_every_commands_checkpoints_in_named_groups(
    grd_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _grd(["checkpoints", "ls", grd_run, "k1"]) == 0
    out = capsys.readouterr().out
    headings = [line for line in out.splitlines() if line.startswith("== ")]
    assert headings == [
        "== k1: 1 checkpoint(s) of its own",
        "== k1/commands/eval.score: 1 checkpoint(s)",
        "== k1/commands/train.fit: 2 checkpoint(s)",
        "== k1/commands/train.fit/partial: 1 checkpoint(s) (saved mid-epoch)",
        "== k1/progress: 1 checkpoint(s) (grd's record of the run's finished commands)",
    ]
    fit = out.split("== k1/commands/train.fit: 2 checkpoint(s)\n")[1]
    assert fit.index("epoch_2*") < fit.index("epoch_1 ") and "loss=0.5" in fit
    assert out.rstrip().endswith(f"grd checkpoints show {grd_run} k1/commands/eval.score")


def test_a_run_with_only_command_checkpoints_is_listed_not_called_empty(
    grd_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    shutil.rmtree(pathlib.Path(grd_run) / "k1" / "epoch_1")
    pathlib.Path(grd_run, "k1", "LATEST.json").unlink()
    assert _grd(["checkpoints", "ls", grd_run, "k1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("== k1: no checkpoints of its own\n") and "no committed checkpoints" not in out
    assert "== k1/commands/train.fit: 2 checkpoint(s)" in out
    assert _grd(["checkpoints", "show", grd_run, "k1"]) == 2
    err = capsys.readouterr().err
    assert "has no committed checkpoint; its checkpoints are under k1/commands/eval.score" in err
    assert "pass one of those as the run key" in err


def test_verify_of_a_run_key_checks_every_commands_checkpoints_and_exits_1_naming_the_damaged_one(
    grd_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _grd(["checkpoints", "verify", grd_run, "k1"]) == 0
    assert "6 checkpoint(s) in 5 group(s): all verify" in capsys.readouterr().out
    payload = pathlib.Path(grd_run, "k1", "commands", "train.fit", "partial", "step_7", "state.pt")
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0x01
    payload.write_bytes(bytes(data))
    assert _grd(["checkpoints", "verify", grd_run, "k1"]) == 1
    out = capsys.readouterr().out
    damaged = out.split("== k1/commands/train.fit/partial")[1].split("==")[0]
    assert "step_7" in damaged and "DAMAGED" in damaged
    assert "6 checkpoint(s) in 5 group(s): 1 DAMAGED" in out


def test_a_groups_name_is_a_run_key_that_shows_verifies_and_removes_its_checkpoints(
    grd_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _grd(["checkpoints", "show", grd_run, "k1/commands/train.fit", "--epoch", "1"]) == 0
    assert f"{grd_run}/k1/commands/train.fit/epoch_1" in capsys.readouterr().out
    assert _grd(["checkpoints", "verify", grd_run, "k1/commands/train.fit/partial"]) == 0
    assert "step_7" in capsys.readouterr().out
    assert _grd(["checkpoints", "rm", grd_run, "k1/commands/eval.score", "--step", "3", "--yes"]) == 0
    capsys.readouterr()
    assert _grd(["checkpoints", "ls", grd_run, "k1"]) == 0
    assert "eval.score" not in capsys.readouterr().out.split("* = latest")[0]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("k3", "run key 'k3' has nothing in the store {store} (its runs are k1, k2); pass one of its run "
               "keys (`grd checkpoints ls {store}` lists them), or the store that run wrote to"),
        ("k1/commands/train.fut",
         "run 'k1' has nothing under 'commands/train.fut' (its checkpoints are under k1/commands/eval.score, "
         "k1/commands/train.fit, k1/commands/train.fit/partial, k1/progress); pass one of those as the run "
         "key (`grd checkpoints ls {store} k1` lists them)"),
        ("k1/commands/../k2", "run key 'k1/commands/../k2': its part '..' is invalid"),
    ],
)
def test_a_run_key_that_names_nothing_is_one_line_naming_it_what_exists_and_the_fix(
    grd_run: str, key: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for verb in ("ls", "verify"):
        assert _grd(["checkpoints", verb, grd_run, key]) == 2
        err = capsys.readouterr().err
        assert err.startswith("grd: error: " + expected.format(store=grd_run)) and err.count("\n") == 1


def test_listing_a_run_never_follows_a_symlinked_directory(
    grd_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (pathlib.Path(grd_run) / "k1" / "elsewhere").symlink_to(pathlib.Path(grd_run) / "k2")
    assert _grd(["checkpoints", "ls", grd_run, "k1"]) == 0
    assert "elsewhere" not in capsys.readouterr().out
