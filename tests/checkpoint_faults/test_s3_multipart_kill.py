"""A writer SIGKILLed while the parts of a large payload are going up leaves no partial object and no new
checkpoint: the previous latest loads, and the next writer saves the same step again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.checkpoint.storage.s3parts import PART_BYTES
from tests.fixtures.seaweed import SeaweedServer

REPO = Path(__file__).resolve().parents[2]
SIZE = 6 * PART_BYTES  # six parts: the kill lands while some are up and others are not

_WRITER = """
import json, sys, torch
from grd_blocks.checkpoint import CheckpointEngine
url, options = sys.argv[1], json.loads(sys.argv[2])
engine = CheckpointEngine(url, storage_options=options)
for step in range(1000):
    weights = torch.full((SIZE,), step % 251, dtype=torch.uint8)
    engine.save_checkpoint("big", state={"w": weights}, step=step)
    print("saved", step, flush=True)
""".replace("SIZE", str(SIZE))


def _parts_up(client: Any, bucket: str) -> int:
    """Parts uploaded so far to the multipart uploads in progress in ``bucket``."""
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sum(
        len(client.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"]).get("Parts", []))
        for up in uploads
    )


@pytest.mark.s3
def test_writer_killed_mid_multipart_upload_leaves_no_object_and_the_previous_latest_loads(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    url, bucket = f"{s3_bucket}/store", s3_bucket.removeprefix("s3://")
    options = s3_server.storage_options
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, url, json.dumps(options)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    client = s3_server.client()
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().split() == ["saved", "0"]
        deadline = time.monotonic() + 60
        while _parts_up(client, bucket) == 0:  # step 1's upload is under way, some part is up
            assert time.monotonic() < deadline and writer.poll() is None, "step 1 never started uploading"
            time.sleep(0.005)  # polling a real server for a real state, bounded above
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    engine = CheckpointEngine(url, storage_options=options)
    ref = engine.latest_checkpoint("big")  # 0, or later if the kill came just after a complete
    assert ref is not None
    fs, run_path = s3_server.filesystem(), f"{bucket}/store/big"
    after = f"{run_path}/step_{ref.index + 1}"
    assert not fs.exists(f"{after}/MANIFEST.json")
    if fs.exists(f"{after}/state.pt"):  # the kill fell between completing the upload and the manifest's PUT
        whole = fs.info(f"{run_path}/step_{ref.index}/state.pt")["size"]  # same shape: same size
        assert fs.info(f"{after}/state.pt")["size"] == whole, "a part-uploaded payload became visible"
    loaded = engine.load_checkpoint("big")
    assert loaded is not None and torch.equal(loaded["w"], torch.full((SIZE,), ref.index, dtype=torch.uint8))
    again = torch.full((SIZE,), 7, dtype=torch.uint8)
    engine.save_checkpoint("big", state={"w": again}, step=ref.index + 1)
    loaded = engine.load_checkpoint("big")
    assert loaded is not None and torch.equal(loaded["w"], again)
