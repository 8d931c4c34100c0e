"""Killed S3 saves leave unfinished multipart uploads (billed storage nobody sees); `grd checkpoints gc`
lists the ones under the store and aborts them with --yes, and no other. Counted through boto3 (an
independent reader), on SeaweedFS."""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from grd_blocks.cli.store import register
from tests.fixtures.seaweed import SeaweedServer

pytestmark = pytest.mark.s3

_SAVER = """
import json, sys, torch
from grd_blocks.checkpoint import CheckpointEngine
run = CheckpointEngine(sys.argv[1], storage_options=json.loads(sys.argv[2])).run("run")
state = {"w": torch.ones(24 * 1024 * 1024)}  # 96 MiB: a multipart upload of 12 parts
print("saving", flush=True)
run.save(state, step=1)
"""


def _uploads(client: Any, bucket: str) -> list[str]:
    found = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sorted(str(upload["Key"]) for upload in found)


def _grd(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grd")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_gc_aborts_the_uploads_killed_saves_left_under_the_store_and_no_other(
    s3_server: SeaweedServer, s3_bucket: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shell = {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_ACCESS_KEY_ID": s3_server.access_key,
             "AWS_SECRET_ACCESS_KEY": s3_server.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in shell.items():
        monkeypatch.setenv(name, value)  # what `grd checkpoints gc s3://...` reads, as a user's shell has it
    client = s3_server.client()
    bucket = s3_bucket.removeprefix("s3://")
    url = f"{s3_bucket}/store"
    rng = random.Random(6)
    for _trial in range(8):  # a kill may land before the first part or after the last: until one is left
        saver = subprocess.Popen([sys.executable, "-c", _SAVER, url, json.dumps(s3_server.storage_options)],
                                 stdout=subprocess.PIPE, text=True)
        assert saver.stdout is not None and saver.stdout.readline().strip() == "saving"
        time.sleep(rng.uniform(0.2, 1.5))  # the random moment of the kill: the variable under test
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        if _uploads(client, bucket):
            break
    left = _uploads(client, bucket)
    assert left and all(key.startswith("store/run/") for key in left), left
    other = client.create_multipart_upload(Bucket=bucket, Key="elsewhere/big.bin")["UploadId"]
    capsys.readouterr()

    assert _grd(["checkpoints", "gc", url, "--older-than", "0s"]) == 0  # lists, aborts nothing
    listed = capsys.readouterr().out
    assert f"{len(left)} unfinished upload(s) older than 0s; run again with --yes" in listed, listed
    assert _uploads(client, bucket) == sorted([*left, "elsewhere/big.bin"])

    assert _grd(["checkpoints", "gc", url, "--older-than", "0s", "--yes"]) == 0
    assert f"aborted {len(left)} unfinished upload(s)" in capsys.readouterr().out
    assert _uploads(client, bucket) == ["elsewhere/big.bin"]  # outside the store: not ours to abort
    assert _grd(["checkpoints", "gc", url, "--older-than", "1h", "--yes"]) == 0
    client.abort_multipart_upload(Bucket=bucket, Key="elsewhere/big.bin", UploadId=other)
