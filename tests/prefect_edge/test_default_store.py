"""The default checkpoint store block exists on first use; ``prefect block register -m grd_blocks`` works."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from grd_blocks.prefect_edge.block import CheckpointStore, resolve_store

pytestmark = pytest.mark.usefixtures("prefect_api")
PREFECT = Path(sys.executable).with_name("prefect")


def delete_default_block() -> None:
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name("default", "grd-checkpoint-store")
        except ObjectNotFound:
            return
        client.delete_block_document(document.id)


@pytest.fixture
def no_default_block() -> Iterator[None]:
    delete_default_block()
    yield
    delete_default_block()


def test_first_use_saves_a_default_block_with_the_relative_local_url(no_default_block: None) -> None:
    store = resolve_store(None)
    assert store.url == "./checkpoints"
    saved = CheckpointStore.load("default")
    assert isinstance(saved, CheckpointStore) and saved.url == "./checkpoints"


def test_an_existing_default_block_is_used_as_saved(no_default_block: None, tmp_path: Path) -> None:
    CheckpointStore(url=str(tmp_path / "mine")).save("default")
    assert resolve_store(None).url == str(tmp_path / "mine")


def test_without_a_reachable_api_the_local_default_is_used_unsaved(no_default_block: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        store = resolve_store(None)
    assert store.url == "./checkpoints" and store._block_document_id is None
    with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):
        client.read_block_document_by_name("default", "grd-checkpoint-store")


@pytest.mark.parametrize("module", ["grd_blocks", "grd_blocks.prefect_edge.block"])
def test_block_register_cli_registers_the_checkpoint_store_type(module: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run([str(PREFECT), "block", "register", "-m", module], env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("grd-checkpoint-store")
    assert block_type.name == "grd Checkpoint Store"
    listed = subprocess.run([str(PREFECT), "block", "type", "ls"], env=env, capture_output=True, text=True,
                            timeout=180, check=False)
    assert listed.returncode == 0 and "grd-checkpoint-store" in listed.stdout.replace("\n", "")
