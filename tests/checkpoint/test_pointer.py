"""LATEST.json updates: SeaweedFS honours conditional writes, so an update that raced another one is decided
again on what is there now (never written over it); a store without them repairs a lagging pointer."""

from __future__ import annotations

import logging
import uuid

import pytest

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.checkpoint.payload.manifest import LatestPointer
from grd_blocks.checkpoint.storage.layout import LATEST_NAME
from grd_blocks.checkpoint.storage.pointer import conditional_writes, update_conditional
from tests.fixtures.seaweed import SeaweedServer


@pytest.mark.s3
def test_seaweedfs_honours_conditional_writes_and_the_probe_leaves_nothing(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    fs = s3_server.filesystem()
    assert conditional_writes(fs, f"{s3_bucket}/run/{LATEST_NAME}")
    assert fs.find(s3_bucket) == []  # no object left (SeaweedFS may still list the folder "run/")


@pytest.mark.s3
def test_an_update_that_lost_a_race_decides_again_on_the_winners_pointer(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    fs = s3_server.filesystem()
    path = f"{s3_bucket}/run/{LATEST_NAME}"
    fs.pipe_file(path, b"first")
    seen: list[bytes | None] = []

    def decide(current: bytes | None) -> bytes | None:
        seen.append(current)
        if len(seen) == 1:  # another writer's update lands between this read and this write
            s3_server.client().put_object(Bucket=s3_bucket[5:], Key=f"run/{LATEST_NAME}", Body=b"winner")
        return (current or b"") + b"+mine"

    update_conditional(fs, path, decide, url=f"{s3_bucket}/run")
    assert seen == [b"first", b"winner"]
    assert fs.cat_file(path) == b"winner+mine"


def test_without_conditional_writes_a_pointer_left_behind_is_repaired_by_the_next_save(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = CheckpointEngine(f"memory://grd-test-{uuid.uuid4().hex[:12]}").run("run")  # plain PUTs: not atomic
    for step in range(6):
        run.save({"step": step}, step=step)
    older = run.find(step=3)
    # a racing writer's plain PUT of an older pointer landed after the newest one's
    behind = LatestPointer(
        unit=older.unit, index=older.index, dirname=older.name, created_at=older.created_at, writer=""
    )
    run.fs.pipe_file(f"{run.path}/{LATEST_NAME}", behind.to_bytes())
    with caplog.at_level(logging.INFO, logger="grd.checkpoint"):
        run.save({"step": 1}, step=1)  # a stale save leaves LATEST alone, and its repair moves it up
    latest = run.latest()
    assert latest is not None and latest.index == 5
    assert "StaleWriter" in caplog.text and "fell behind" in caplog.text
    run.fs.rm(run.path, recursive=True)
