"""Sharded checkpoints on S3 (a real SeaweedFS server): ranks write their shards as objects under fresh names,
the manifest's PUT commits all of them; resharding and the agreed fallback work as on local disk; a same-step
re-save never overwrites an object of the version it replaces; a failed save leaves nothing visible."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import s3fs
import torch

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import CheckpointError
from tests.checkpoint import sharded_kills, sharded_procs
from tests.fixtures.seaweed import SeaweedServer

SHARD = 3 * 2**12
"""Elements of each rank's shard when 2 ranks save; the whole tensor splits evenly on 1, 2, 3."""


def _objects(fs: s3fs.S3FileSystem, folder: str) -> set[str]:
    fs.invalidate_cache()
    return {path.rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False)}


def test_a_resave_of_the_same_step_writes_fresh_objects_and_drops_the_old_ones_after_the_commit(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    url = f"{s3_bucket}/store/run"
    run = RunCheckpoints.from_url(url, storage_options=s3_server.storage_options)
    first = run.save_sharded({"weights": torch.full((4,), 1.0), "extra": {"n": 1}}, step=2)
    fs = run.fs
    folder = f"{run.path}/step_2"
    before = _objects(fs, folder)
    assert len(before) == 3 and "MANIFEST.json" in before
    assert sum(name.endswith(".metadata") for name in before) == 1
    second = run.save_sharded({"weights": torch.full((4,), 2.0), "extra": {"n": 2}}, step=2)
    after = _objects(fs, folder)
    assert not (before - {"MANIFEST.json"}) & after  # every object of the first version is gone, none reused
    assert second.created_at > first.created_at and run.verify(second) == []
    state: dict[str, Any] = {"weights": torch.zeros(4), "extra": {"n": 0}}
    assert run.load_sharded(state) == second
    assert torch.equal(state["weights"], torch.full((4,), 2.0)) and state["extra"] == {"n": 2}


def test_a_failed_save_on_s3_leaves_nothing_visible_and_drops_its_objects(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    url = f"{s3_bucket}/store/run"
    run = RunCheckpoints.from_url(url, storage_options=s3_server.storage_options)
    run.save_sharded({"weights": torch.ones(2)}, step=1)
    with pytest.raises(CheckpointError):
        run.save_sharded({"weights": torch.ones(2), "bad": lambda: None}, step=2)
    latest = run.latest()
    assert latest is not None and latest.name == "step_1"
    assert [ref.name for ref in run.checkpoints()] == ["step_1"]


@pytest.mark.torch_procs
def test_two_ranks_save_to_s3_load_on_one_and_three_and_a_flipped_bit_sends_all_ranks_back(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    url = f"{s3_bucket}/store/run"
    env = {"TEST_STORAGE_OPTIONS": json.dumps(s3_server.storage_options)}
    sharded_procs.run(2, "save_steps", url, str(SHARD), "1,2", env=env)
    run = RunCheckpoints.from_url(url, storage_options=s3_server.storage_options)
    latest = run.latest()
    assert latest is not None and latest.name == "step_2" and run.verify(latest) == []
    for world in (1, 3):
        loaded = sharded_procs.run(world, "load_latest", url, str(SHARD * 2 // world), env=env)
        found = {(r["loaded"], tuple(r["values"]), r["step"]) for r in loaded.results}
        assert found == {("step_2", (2.0,), 2)}
    fs = run.fs
    shard = sorted(name for name in _objects(fs, f"{run.path}/step_2") if name.endswith(".distcp"))[1]
    data = bytearray(fs.cat_file(f"{run.path}/step_2/{shard}"))
    data[random.Random(7).randrange(len(data))] ^= 0x10
    fs.pipe_file(f"{run.path}/step_2/{shard}", bytes(data))
    loaded = sharded_procs.run(2, "load_latest", url, str(SHARD), env=env)
    assert [(r["loaded"], r["values"]) for r in loaded.results] == [("step_1", [1.0])] * 2
    lines = [line for log in loaded.logs for line in log.splitlines() if line.startswith("LOG ")]
    assert len(lines) == 1 and shard in lines[0] and "all 2 ranks fall back to" in lines[0], lines


def _s3_check(fs: s3fs.S3FileSystem, run_path: str) -> dict[str, Any]:
    """The independent reader on S3 (the same judgement as test_sharded.independent_check): every step_N
    prefix with a MANIFEST.json must list objects that are there with their size and digests (objects it does
    not list are a killed save's leftovers, invisible); LATEST.json must name one that is whole."""
    from tests.checkpoint.test_sharded import _file_problem

    fs.invalidate_cache()
    folders = [path.rsplit("/", 1)[-1] for path in fs.ls(run_path, detail=False)]
    committed, uncommitted, torn = [], [], {}
    for folder in sorted(name for name in folders if name.startswith("step_")):
        names = _objects(fs, f"{run_path}/{folder}")
        if "MANIFEST.json" not in names:
            uncommitted.append(folder)
            continue
        committed.append(folder)
        manifest = json.loads(fs.cat_file(f"{run_path}/{folder}/MANIFEST.json"))
        for name, entry in manifest["files"].items():
            if name not in names:
                torn[folder] = f"{name} is missing"
                break
            data = fs.cat_file(f"{run_path}/{folder}/{name}")
            problem = _file_problem(data, entry, name)
            if problem:
                torn[folder] = problem
                break
    latest = json.loads(fs.cat_file(f"{run_path}/LATEST.json")) if "LATEST.json" in folders else None
    return {"committed": committed, "uncommitted": uncommitted, "torn": torn,
            "latest": latest["dirname"] if latest else None,
            "latest_index": latest["index"] if latest else -1}


@pytest.mark.torch_procs
@pytest.mark.parametrize(
    "trials", [4, pytest.param(100, marks=[pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(1800)])]
)
def test_ranks_sigkilled_during_sync_and_async_saves_to_s3_never_leave_a_torn_checkpoint(
    s3_server: SeaweedServer, s3_bucket: str, trials: int
) -> None:
    """test_sharded's kill trials against SeaweedFS (tests/checkpoint/sharded_kills.py), judged by
    ``_s3_check``: no torn checkpoint, LATEST.json naming a whole one, never moving backwards, the latest
    loading on 1 rank after every trial and on 2 every tenth."""
    url = f"{s3_bucket}/store/run"
    run = RunCheckpoints.from_url(url, storage_options=s3_server.storage_options)

    def judge() -> sharded_kills.Judged:
        found = _s3_check(run.fs, run.path)
        return sharded_kills.Judged(found["torn"], found["latest"], found["latest_index"],
                                    found["latest"] in found["committed"], bool(found["uncommitted"]))

    sharded_kills.run_trials(trials, 35, url, SHARD * 8, judge, s3_server.storage_options)


def test_a_large_shard_goes_up_in_parallel_parts_hashed_once_on_its_way(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    """A 20 MiB shard is a multipart object of three 8 MiB parts (its ETag, read by boto3, says so; s3fs's own
    file sent it as one PUT), and the manifest's digests, computed as the parts went up, are those of the
    object the store holds (checked by the independent reader from the object downloaded by boto3)."""
    from tests.checkpoint.test_sharded import _file_problem

    url = f"{s3_bucket}/store/run"
    run = RunCheckpoints.from_url(url, storage_options=s3_server.storage_options)
    weights = torch.arange(5 * 2**20, dtype=torch.float32)  # 20 MiB
    ref = run.save_sharded({"weights": weights}, step=1)
    bucket, prefix = run.path.split("/", 1)
    client = s3_server.client()
    manifest_key = f"{prefix}/step_1/MANIFEST.json"
    manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    shards = [name for name in manifest["files"] if name.endswith(".distcp")]
    assert len(shards) == 1
    key = f"{prefix}/step_1/{shards[0]}"
    assert client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-3")
    data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert _file_problem(data, manifest["files"][shards[0]], shards[0]) is None
    state = {"weights": torch.zeros_like(weights)}
    assert run.load_sharded(state) == ref and torch.equal(state["weights"], weights)


def test_a_shard_whose_writing_fails_part_way_leaves_no_object_and_no_upload_behind(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    """The writer fails after two full parts went up: the error reaches the writer, the object never
    appears and the multipart upload is aborted (boto3 lists none), so no reader and no bill sees it."""
    from grd_blocks.checkpoint.sharded import _fsspec_filesystem

    run = RunCheckpoints.from_url(f"{s3_bucket}/store/run", storage_options=s3_server.storage_options)
    sent: dict[str, Any] = {}
    adapter = _fsspec_filesystem(run.fs, sent, "blake3")
    path = f"{run.path}/staged/token__0_0.distcp"
    piece = bytes(8 * 2**20)
    with pytest.raises(RuntimeError, match="the writer failed"), adapter.create_stream(path, "wb") as stream:
        stream.write(piece)
        stream.write(piece)
        stream.write(b"partial")
        raise RuntimeError("the writer failed")
    bucket, key = path.split("/", 1)
    client = s3_server.client()
    assert client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert sent == {}
