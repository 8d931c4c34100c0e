"""What a command receives: GRD_* variables, PYTHONUNBUFFERED unless the spec sets it, secrets as AWS_*."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import SecretStr

from grd_blocks.orchestration.environment import StoreAccess, command_env
from grd_blocks.prefect_edge.block import CheckpointStore


def _s3_access(**options: object) -> StoreAccess:
    return CheckpointStore(url="s3://bucket/ckpts", endpoint_url="http://127.0.0.1:8333",
                           aws_access_key_id=SecretStr("AKID"), aws_secret_access_key=SecretStr("s3cr3t"),
                           storage_options={"use_ssl": False, **options}).access()


def test_command_env_carries_budget_identity_and_its_checkpoint_prefix() -> None:
    env = command_env(spec_env={"SEED": "1"}, run_key="r1", attempt=2, time_left_s=12.3456, grace_s=5,
                      phase="train", command="fit", store=_s3_access(), base={"PATH": "/bin"})
    assert env["GRD_TIME_LEFT_S"] == "12.346"
    assert env["GRD_GRACE_S"] == "5.000"
    assert (env["GRD_RUN_KEY"], env["GRD_ATTEMPT"], env["SEED"], env["PATH"]) == ("r1", "2", "1", "/bin")
    assert env["GRD_CHECKPOINT_URL"] == "s3://bucket/ckpts/r1/commands/train.fit"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_secrets_travel_only_as_aws_variables() -> None:
    env = command_env(spec_env={}, run_key="r", attempt=1, time_left_s=1, grace_s=1, phase="p", command="c",
                      store=_s3_access(), base={})
    options = json.loads(env["GRD_CHECKPOINT_STORAGE_OPTIONS"])
    assert options == {"endpoint_url": "http://127.0.0.1:8333", "use_ssl": False}
    assert "s3cr3t" not in env["GRD_CHECKPOINT_STORAGE_OPTIONS"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("AKID", "s3cr3t")


def test_spec_may_set_pythonunbuffered_and_unlimited_budget_reads_inf() -> None:
    env = command_env(spec_env={"PYTHONUNBUFFERED": "0"}, run_key="r", attempt=1, time_left_s=math.inf,
                      grace_s=5, phase="p", command="c", store=None, base={})
    assert env["PYTHONUNBUFFERED"] == "0"
    assert float(env["GRD_TIME_LEFT_S"]) == math.inf
    assert "GRD_CHECKPOINT_URL" not in env


def test_a_relative_local_store_is_made_absolute_for_commands_with_another_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    access = CheckpointStore(url="./checkpoints").access()
    assert Path(access.url).is_absolute()
    assert access.command_url("r", "p", "c").endswith("/checkpoints/r/commands/p.c")


def test_the_deadline_also_travels_as_absolute_wall_clock_seconds() -> None:
    import time

    before = time.time()
    env = command_env(spec_env={}, run_key="r", attempt=1, time_left_s=30.0, grace_s=5, phase="p",
                      command="c", store=None, base={})
    after = time.time()
    assert before + 30.0 - 0.01 <= float(env["GRD_DEADLINE_UNIX"]) <= after + 30.0 + 0.01
    unlimited = command_env(spec_env={}, run_key="r", attempt=1, time_left_s=math.inf, grace_s=5, phase="p",
                            command="c", store=None, base={})
    assert unlimited["GRD_DEADLINE_UNIX"] == "inf"


def test_the_warning_variables_appear_only_with_a_warning_and_never_leak_from_an_outer_grd() -> None:
    import signal

    outer = {"GRD_WARN_S": "600.000", "GRD_WARN_SIGNAL": "SIGUSR2"}  # this grd itself runs under a grd
    plain = command_env(spec_env={}, run_key="r", attempt=1, time_left_s=60, grace_s=5, phase="p",
                        command="c", store=None, base=outer)
    assert "GRD_WARN_S" not in plain and "GRD_WARN_SIGNAL" not in plain
    warned = command_env(spec_env={}, run_key="r", attempt=1, time_left_s=60, grace_s=5, phase="p",
                         command="c", store=None, base=outer, warn_s=20.0, warn_signal=signal.SIGUSR1)
    assert (warned["GRD_WARN_S"], warned["GRD_WARN_SIGNAL"]) == ("20.000", "SIGUSR1")


def test_the_timeout_file_variable_is_the_attempts_own_and_never_leaks_from_an_outer_grd(
    tmp_path: Path,
) -> None:
    outer = {"GRD_TIMEOUT_FILE": "/outer/grd/attempt/stopped-for-budget"}  # this grd runs under a grd
    plain = command_env(spec_env={}, run_key="r", attempt=1, time_left_s=60, grace_s=5, phase="p",
                        command="c", store=None, base=outer)
    assert "GRD_TIMEOUT_FILE" not in plain
    own = command_env(spec_env={"GRD_TIMEOUT_FILE": "/spec/says"}, run_key="r", attempt=1, time_left_s=60,
                      grace_s=5, phase="p", command="c", store=None, base=outer,
                      timeout_file=tmp_path / "stopped-for-budget")
    assert own["GRD_TIMEOUT_FILE"] == str(tmp_path / "stopped-for-budget")


def test_the_stores_retention_reaches_the_commands_own_checkpoints(tmp_path: Path) -> None:
    from grd_blocks.checkpoint import RunCheckpoints

    block = CheckpointStore(url=str(tmp_path / "store"), keep_last=3, keep_best=1, monitor="loss")
    env = command_env(spec_env={}, run_key="r", attempt=1, time_left_s=10, grace_s=1, phase="p", command="c",
                      store=block.access(), base={})
    assert {k: v for k, v in env.items() if k.startswith("GRD_CHECKPOINT_") and "URL" not in k
            and "OPTIONS" not in k} == {"GRD_CHECKPOINT_KEEP_LAST": "3", "GRD_CHECKPOINT_KEEP_BEST": "1",
                                        "GRD_CHECKPOINT_MONITOR": "loss", "GRD_CHECKPOINT_MODE": "min"}
    own = RunCheckpoints.from_env(env)
    for epoch in range(1, 11):  # the best loss is epoch 2's
        own.save({"epoch": epoch}, epoch=epoch, metrics={"loss": 0.01 if epoch == 2 else 1.0 / epoch})
    assert [ref.index for ref in own.checkpoints()] == [2, 8, 9, 10]


def test_a_store_without_retention_sets_no_retention_variables(tmp_path: Path) -> None:
    env = command_env(spec_env={}, run_key="r", attempt=1, time_left_s=10, grace_s=1, phase="p", command="c",
                      store=CheckpointStore(url=str(tmp_path)).access(), base={})
    assert not [k for k in env if k.startswith("GRD_CHECKPOINT_KEEP") or k == "GRD_CHECKPOINT_MONITOR"]


def test_a_secret_looking_storage_option_never_travels_in_the_options_variable() -> None:
    env = command_env(spec_env={}, run_key="r", attempt=1, time_left_s=1, grace_s=1, phase="p", command="c",
                      store=_s3_access(session_token="tok3n", client_kwargs={"verify": False}), base={})
    assert "tok3n" not in env["GRD_CHECKPOINT_STORAGE_OPTIONS"]
    assert json.loads(env["GRD_CHECKPOINT_STORAGE_OPTIONS"])["client_kwargs"] == {"verify": False}


def test_the_blocks_command_environment_is_the_one_a_benchmark_command_gets(tmp_path: Path) -> None:
    """One copy of the rule: what ``CheckpointStore.command_environment`` gives a child is exactly the store
    part of ``command_env`` for the same prefix."""
    block = CheckpointStore(url="s3://bucket/ckpts", endpoint_url="http://127.0.0.1:8333",
                            aws_access_key_id=SecretStr("AKID"), aws_secret_access_key=SecretStr("s3cr3t"),
                            keep_last=2)
    full = command_env(spec_env={}, run_key="r", attempt=1, time_left_s=1, grace_s=1, phase="p", command="c",
                       store=block.access(), base={})
    own = block.command_environment("r", "commands", "p.c")
    assert own == {name: full[name] for name in own}
    assert {name for name in full if name.startswith(("AWS_", "GRD_CHECKPOINT_"))} == set(own)
