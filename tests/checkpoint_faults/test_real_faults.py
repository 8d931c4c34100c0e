"""Real faults, caused for real: the S3 server goes away and comes back, wrong credentials, a full disk.

Each one must surface as ``StoreUnavailable`` naming the store (never as "no checkpoint", which would
restart a
run from scratch), leave the previous latest loadable, and the next save must work once the fault is gone.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.errors import StoreUnavailable
from tests.checkpoint_faults._states import state_for
from tests.fixtures.seaweed import SeaweedServer


@pytest.mark.s3
def test_s3_outage_raises_store_unavailable_and_recovers_after_restart(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    url = f"{s3_bucket}/store"
    engine = CheckpointEngine(url, storage_options=s3_server.storage_options)
    engine.save_checkpoint("outage", state=state_for(0), step=0)
    engine.save_checkpoint("outage", state=state_for(1), step=1)
    s3_server.stop()
    with pytest.raises(StoreUnavailable) as saving:
        engine.save_checkpoint("outage", state=state_for(2), step=2)
    assert url in str(saving.value) and "reachable" in str(saving.value)
    with pytest.raises(StoreUnavailable):
        engine.latest_checkpoint("outage")  # an outage is never "no checkpoint yet"
    s3_server.start()
    ref = engine.latest_checkpoint("outage")
    assert ref is not None and ref.index == 1
    assert engine.load_checkpoint("outage") == state_for(1)
    engine.save_checkpoint("outage", state=state_for(2), step=2)
    assert engine.load_checkpoint("outage") == state_for(2)


@pytest.mark.s3
@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_wrong_credentials_raise_store_unavailable_naming_credentials(
    s3_server: SeaweedServer, s3_bucket: str, wrong: str
) -> None:
    url = f"{s3_bucket}/store"
    CheckpointEngine(url, storage_options=s3_server.storage_options).save_checkpoint(
        "creds", state=state_for(0), step=0
    )
    bad = CheckpointEngine(url, storage_options=s3_server.storage_options_with(**{wrong: "not-the-" + wrong}))
    with pytest.raises(StoreUnavailable) as saving:
        bad.save_checkpoint("creds", state=state_for(1), step=1)
    with pytest.raises(StoreUnavailable) as reading:
        bad.latest_checkpoint("creds")  # refused, never mistaken for an empty store
    for error in (saving.value, reading.value):
        assert url in str(error) and "credentials" in str(error)
        assert isinstance(error.__cause__, PermissionError)
    good = CheckpointEngine(url, storage_options=s3_server.storage_options)
    assert good.load_checkpoint("creds") == state_for(0)
    good.save_checkpoint("creds", state=state_for(1), step=1)
    assert good.load_checkpoint("creds") == state_for(1)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted at a temp dir (skips if this machine does not allow mounting)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs for the full-disk test (needs root/CAP_SYS_ADMIN): "
                    f"{done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", str(mount_point)], check=True, capture_output=True)


def test_full_disk_raises_store_unavailable_and_keeps_previous_latest(tiny_disk: Path) -> None:
    url = str(tiny_disk / "store")
    engine = CheckpointEngine(url)
    engine.save_checkpoint("full", state=state_for(0), step=0)
    with pytest.raises(StoreUnavailable) as saving:
        engine.save_checkpoint("full", state=state_for(1, size=3 * 1024 * 1024), step=1)
    assert url in str(saving.value) and "disk" in str(saving.value)
    assert "No space left" in str(saving.value)
    ref = engine.latest_checkpoint("full")
    assert ref is not None and ref.index == 0
    assert engine.load_checkpoint("full") == state_for(0)
    # the failed save left no staging files behind: the disk has room again for a normal save
    engine.save_checkpoint("full", state=state_for(1), step=1)
    assert engine.load_checkpoint("full") == state_for(1)
