"""The CheckpointStore Prefect Block: standards, save/load by name, secrets masked, resolve_store."""

from __future__ import annotations

import argparse
import logging
import pathlib
import uuid

import pytest
import torch
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

from grd_blocks.cli.store import register
from grd_blocks.errors import ConfigError, StoreUnavailable
from grd_blocks.prefect_edge.block import CheckpointStore, resolve_store

SECRET = "s3cr3t-" + uuid.uuid4().hex


BLOCKS: list[type[Block]] = [CheckpointStore]  # every Block grd_blocks defines (kept honest below)


def _subclasses(cls: type[Block]) -> set[type[Block]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_block_grd_defines_is_under_the_standards_suite() -> None:
    import grd_blocks.prefect_edge.block  # noqa: F401  (imports every block module)

    mine = {cls for cls in _subclasses(Block) if cls.__module__.startswith("grd_blocks.")}
    assert mine == set(BLOCKS)


class TestBlockStandards(BlockStandardTestSuite):
    """Prefect's own block standards (descriptions ending in a period, code example, logo with Pillow), run
    over every grd block. Two checks are adapted to grd having no public site: see below."""

    @pytest.fixture(params=BLOCKS, ids=lambda cls: cls.__name__)
    def block(self, request: pytest.FixtureRequest) -> type[Block]:
        block: type[Block] = request.param
        return block

    def test_pillow_is_installed_so_the_logo_check_really_runs(self) -> None:
        from prefect.testing.standard_test_suites import blocks

        assert blocks.HAS_PIL

    def test_has_a_documentation_url(self, block: type[Block]) -> None:
        """No placeholder: a documentation link is a real https URL, or there is none (grd has no public
        documentation site; the README documents the block)."""
        url = block._documentation_url
        assert url is None or (str(url).startswith("https://") and "github.com/grd/grd" not in str(url))

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        """Prefect's logo check (square, 45-1000 px, loaded with Pillow) for a block that has a logo; a block
        without one (none of grd's yet: there is nowhere public to host it) shows Prefect's default."""
        if block._logo_url is None:
            assert block._documentation_url is None  # no site at all, so neither link: nothing to check
            return
        super().test_has_a_valid_image(block)


def test_slug_is_fixed() -> None:
    assert CheckpointStore.get_block_type_slug() == "grd-checkpoint-store"


def test_block_methods_do_not_shadow_block_save_and_load() -> None:
    assert not {"save", "load", "delete", "asave", "aload"} & set(vars(CheckpointStore))


def test_block_delegates_to_engine(tmp_path: pathlib.Path) -> None:
    store = CheckpointStore(url=str(tmp_path / "ck"), keep_last=1)
    store.save_checkpoint("r", state={"w": torch.ones(3)}, step=0, metrics={"loss": 1.0})
    store.save_checkpoint("r", state={"w": torch.ones(3) * 2}, step=1, metrics={"loss": 0.5})
    assert [ref.index for ref in store.list_checkpoints("r")] == [1]
    latest = store.latest_checkpoint("r")
    assert latest is not None and latest.index == 1
    loaded = store.load_checkpoint("r")
    assert loaded is not None and torch.equal(loaded["w"], torch.ones(3) * 2)
    assert store.resume_hints("r", target=5).remaining == 4 and store.list_runs() == ["r"]


def test_secrets_are_masked_everywhere_but_the_engine(caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(
        url="s3://bucket/ckpts",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id=SecretStr("AKIDEXAMPLE"),
        aws_secret_access_key=SecretStr(SECRET),
        storage_options={"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}},
    )
    assert SECRET not in repr(store) and SECRET not in str(store) and SECRET not in store.model_dump_json()
    assert "key" not in store.public_storage_options()
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreUnavailable, match=r"s3://bucket/ckpts") as info:
        store.save_checkpoint("r", state={"a": 1}, step=0)
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    assert store.engine().storage_options["secret"] == SECRET


def test_s3_fields_on_a_local_url_are_rejected(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="not s3://"):
        CheckpointStore(url=str(tmp_path), endpoint_url="http://127.0.0.1:9").engine()


def test_command_environment_passes_secrets_only_as_aws_env(tmp_path: pathlib.Path) -> None:
    store = CheckpointStore(
        url="s3://b/p", endpoint_url="http://127.0.0.1:9", aws_secret_access_key=SecretStr(SECRET)
    )
    env = store.command_environment("run1", "commands", "train.fit")
    assert env["GRD_CHECKPOINT_URL"] == "s3://b/p/run1/commands/train.fit"
    assert SECRET not in env["GRD_CHECKPOINT_STORAGE_OPTIONS"] and env["AWS_SECRET_ACCESS_KEY"] == SECRET


def test_command_environment_carries_the_blocks_retention_to_the_child(tmp_path: pathlib.Path) -> None:
    from grd_blocks.checkpoint import RunCheckpoints

    env = CheckpointStore(url=str(tmp_path), keep_last=2).command_environment("run1", "own")
    own = RunCheckpoints.from_env(env)
    for step in range(5):
        own.save({"step": step}, step=step)
    assert [ref.index for ref in own.checkpoints()] == [3, 4]


def test_resolve_store_treats_paths_and_urls_as_unsaved_blocks(tmp_path: pathlib.Path) -> None:
    assert resolve_store(str(tmp_path)).url == str(tmp_path)
    assert resolve_store("s3://b/p").url == "s3://b/p"
    assert resolve_store("./ck").url == "./ck"
    with pytest.raises(ConfigError, match="neither a URL/path nor a block name"):
        resolve_store("Bad Name!")


@pytest.mark.usefixtures("prefect_api")
def test_block_saves_and_loads_by_name_with_secret(tmp_path: pathlib.Path) -> None:
    name = f"ck-{uuid.uuid4().hex[:8]}"
    CheckpointStore(
        url=str(tmp_path / "ck"), keep_last=2, monitor="loss", keep_best=1, aws_secret_access_key=None
    ).save(name)
    loaded = CheckpointStore.load(name)
    assert (loaded.url, loaded.keep_last, loaded.keep_best) == (str(tmp_path / "ck"), 2, 1)
    loaded.save_checkpoint("r", state={"a": 1}, step=0)
    assert resolve_store(name).load_checkpoint("r") == {"a": 1}

    s3_name = f"s3-{uuid.uuid4().hex[:8]}"
    CheckpointStore(url="s3://b/p", aws_secret_access_key=SecretStr(SECRET)).save(s3_name)
    reloaded = CheckpointStore.load(s3_name)
    assert reloaded.aws_secret_access_key is not None
    assert reloaded.aws_secret_access_key.get_secret_value() == SECRET
    with pytest.raises(ConfigError, match="grd store create"):
        resolve_store(f"missing-{uuid.uuid4().hex[:8]}")


@pytest.mark.usefixtures("prefect_api")
def test_resolve_store_none_uses_default_block_else_local(tmp_path: pathlib.Path) -> None:
    CheckpointStore.delete("default") if _exists("default") else None
    assert resolve_store(None).url == "./checkpoints"
    CheckpointStore(url=str(tmp_path / "default-store")).save("default", overwrite=True)
    try:
        assert resolve_store(None).url == str(tmp_path / "default-store")
    finally:
        CheckpointStore.delete("default")


def _exists(name: str) -> bool:
    try:
        CheckpointStore.load(name)
    except ValueError:
        return False
    return True


@pytest.mark.usefixtures("prefect_api")
def test_cli_store_create_then_ls_by_block_name(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser(prog="grd")
    register(parser.add_subparsers(required=True))
    name = f"cli-{uuid.uuid4().hex[:8]}"
    args = parser.parse_args(["store", "create", name, str(tmp_path / "ck"), "--keep-last", "3"])
    assert args.func(args) == 0
    CheckpointStore.load(name).save_checkpoint("r", state={"a": 1}, step=4, metrics={"loss": 0.25})
    args = parser.parse_args(["checkpoints", "ls", name, "r"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "step_4*" in out and "loss=0.25" in out
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    args = parser.parse_args(["store", "create", name + "x", "s3://b/p", "--aws-credentials-from-env"])
    assert args.func(args) == 2
    assert "AWS_ACCESS_KEY_ID" in capsys.readouterr().err


def test_the_block_keeps_one_engine_and_one_filesystem_until_its_configuration_changes(
        tmp_path: pathlib.Path) -> None:
    store = CheckpointStore(url=str(tmp_path / "a"), keep_last=2)
    first = store.engine()
    store.save_checkpoint("r", state={"a": 1}, step=0)
    assert store.engine() is first and store.engine().fs is first.fs
    store.keep_last = 1
    changed = store.engine()
    assert changed is not first and changed.retention.keep_last == 1
    store.url = str(tmp_path / "b")
    assert store.engine().url == str(tmp_path / "b")
    assert store.list_runs() == [] and CheckpointStore(url=str(tmp_path / "a")).list_runs() == ["r"]
