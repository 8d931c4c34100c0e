"""Hostile store contents: links out of the store, FIFOs, devices and oversized pointers are refused (an error
naming the path), never followed, waited on or read to the end; the previous valid checkpoint is used
instead, and nothing outside the store is ever deleted."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from grd_blocks.checkpoint import CheckpointEngine, RunCheckpoints
from grd_blocks.checkpoint.storage.safe_io import POINTER_LIMIT
from grd_blocks.cli.store import register
from grd_blocks.errors import CheckpointCorrupt
from tests.checkpoint.conftest import Backend
from tests.fixtures.seaweed import SeaweedServer

pytestmark = pytest.mark.timeout(120)  # a FIFO that is waited on would hang: fail instead


def _store(tmp_path: Path) -> tuple[str, RunCheckpoints]:
    url = str(tmp_path / "store")
    run = CheckpointEngine(url).run("run")
    for step in range(3):
        run.save({"step": step}, step=step)
    return url, run


def _grd(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grd")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _outside_copy(run: RunCheckpoints, name: str, tmp_path: Path) -> Path:
    """Move checkpoint ``name`` out of the store and leave a symbolic link to it in its place."""
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    shutil.move(os.path.join(run.path, name), outside)
    os.symlink(outside, os.path.join(run.path, name))
    return outside


def test_a_symlinked_checkpoint_dir_is_not_loaded_and_nothing_outside_is_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    url, run = _store(tmp_path)
    outside = _outside_copy(run, "step_2", tmp_path)  # LATEST.json still names step_2
    with caplog.at_level(logging.WARNING, logger="grd.checkpoint"):
        latest = run.latest()
        state = run.load()
    assert latest is not None and latest.index == 1 and state == {"step": 1}
    assert "step_2 is a symbolic link to" in caplog.text and "falling back" in caplog.text
    assert [ref.index for ref in run.checkpoints()] == [0, 1]
    assert run.verify("step_2")[0].endswith(
        "never follows a link out of the store (remove it, or restore the checkpoint it replaced)"
    )
    pruning = CheckpointEngine(url, keep_last=1).run("run")
    pruning.save({"step": 3}, step=3)  # retention prunes 0..1, never through the link
    assert _grd(["checkpoints", "rm", url, "run", "--all", "--yes"]) == 0
    assert _grd(["checkpoints", "rm", url, "run", "--step", "2", "--yes"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("grd: error: ") and "step_2 is a symbolic link" in err
    assert sorted(p.name for p in outside.iterdir()) == ["MANIFEST.json", "state.json"]
    assert os.path.islink(os.path.join(run.path, "step_2"))


def test_deleting_a_symlinked_checkpoint_refuses_and_leaves_the_target(tmp_path: Path) -> None:
    _, run = _store(tmp_path)
    outside = _outside_copy(run, "step_1", tmp_path)
    with pytest.raises(CheckpointCorrupt, match=r"step_1 is a symbolic link to .*not a checkpoint directory"):
        run.delete("step_1")
    assert (outside / "MANIFEST.json").is_file()


def _dev_zero_link(path: str) -> None:
    os.unlink(path)
    os.symlink("/dev/zero", path)


def _fifo(path: str) -> None:
    os.unlink(path)
    os.mkfifo(path)


def _oversized(path: str) -> None:
    with open(path, "ab") as handle:
        handle.write(b" " * (POINTER_LIMIT + 1))


@pytest.mark.parametrize(
    ("plant", "found"),
    [
        (_dev_zero_link, "a symbolic link to /dev/zero"),
        (_fifo, "a FIFO"),
        (_oversized, "more than 65536 bytes"),
    ],
    ids=["dev-zero-link", "fifo", "oversized"],
)
def test_a_hostile_latest_pointer_is_refused_and_the_newest_valid_checkpoint_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, plant: Callable[[str], None], found: str
) -> None:
    _, run = _store(tmp_path)
    plant(os.path.join(run.path, "LATEST.json"))
    with caplog.at_level(logging.WARNING, logger="grd.checkpoint"):
        latest = run.latest()
        state = run.load()
    assert latest is not None and latest.index == 2 and state == {"step": 2}
    assert f"{run.url}/LATEST.json is {found}" in caplog.text
    run.save({"step": 3}, step=3)  # the next save replaces the pointer with a regular file
    assert os.path.isfile(os.path.join(run.path, "LATEST.json")) and run.load() == {"step": 3}


@pytest.mark.parametrize(
    ("plant", "found"),
    [(_dev_zero_link, "a symbolic link to /dev/zero"), (_fifo, "a FIFO")],
    ids=["dev-zero-link", "fifo"],
)
def test_a_hostile_manifest_is_refused_and_the_previous_checkpoint_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, plant: Callable[[str], None], found: str
) -> None:
    _, run = _store(tmp_path)
    plant(os.path.join(run.path, "step_2", "MANIFEST.json"))
    with caplog.at_level(logging.WARNING, logger="grd.checkpoint"):
        latest = run.latest()
        state = run.load()
    assert latest is not None and latest.index == 1 and state == {"step": 1}
    assert f"{run.url}/step_2/MANIFEST.json is {found}" in caplog.text
    assert [ref.index for ref in run.checkpoints()] == [0, 1]


def test_a_payload_linked_to_a_file_outside_the_store_is_refused(tmp_path: Path) -> None:
    _, run = _store(tmp_path)
    payload = os.path.join(run.path, "step_2", "state.json")
    outside = tmp_path / "same-bytes.json"
    shutil.copyfile(payload, outside)  # even identical bytes: a link is not what grd wrote
    os.unlink(payload)
    os.symlink(outside, payload)
    assert "state.json is a symbolic link to" in run.verify("step_2")[0]
    assert run.load() == {"step": 1}


@pytest.mark.s3
def test_an_oversized_latest_object_on_s3_is_refused_and_then_replaced(
    s3_server: SeaweedServer, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    run = CheckpointEngine(f"{s3_bucket}/store", storage_options=s3_server.storage_options).run("run")
    for step in range(2):
        run.save({"step": step}, step=step)
    run.fs.pipe_file(f"{run.path}/LATEST.json", b"{" + b" " * (8 * POINTER_LIMIT))
    with caplog.at_level(logging.WARNING, logger="grd.checkpoint"):
        latest = run.latest()
    assert latest is not None and latest.index == 1
    assert "LATEST.json is more than 65536 bytes" in caplog.text
    run.save({"step": 2}, step=2)  # the conditional update replaces the oversized object
    assert len(run.fs.cat_file(f"{run.path}/LATEST.json")) < POINTER_LIMIT and run.load() == {"step": 2}


def _deep(path: str) -> None:
    with open(path, "wb") as handle:
        handle.write(b"[" * 5000)  # 5 kB: deeper than json's recursion limit (RecursionError, not ValueError)


@pytest.mark.parametrize("name", ["LATEST.json", "step_2/MANIFEST.json"])
def test_deeply_nested_json_in_the_store_is_a_damaged_entry_with_fallback_and_one_cli_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A 5 kB '[[[[...' file as the pointer or a manifest raised RecursionError from latest(), load() and
    listing, every later save of the run failed, and `grd checkpoints ls` / `verify` printed a traceback."""
    url, run = _store(tmp_path)
    _deep(os.path.join(run.path, name))
    latest = run.latest()
    expected = 2 if name == "LATEST.json" else 1
    assert latest is not None and latest.index == expected and run.load() == {"step": expected}
    run.save({"step": 3}, step=3)  # later saves still commit
    assert run.load() == {"step": 3}
    if name != "LATEST.json":
        assert _grd(["checkpoints", "verify", url, "run", "--step", "2"]) != 0
        out = capsys.readouterr()
        assert "nests JSON deeper" in out.out + out.err and "Traceback" not in out.out + out.err, out
        assert _grd(["checkpoints", "ls", "--verify", url, "run"]) in (0, 1)
        listed = capsys.readouterr()
        assert "step_3" in listed.out and "Traceback" not in listed.out + listed.err, listed


_LOAD_PEAK = """
import json, resource, sys
from grd_blocks.checkpoint import CheckpointEngine
url, options = sys.argv[1], json.loads(sys.argv[2])
run = CheckpointEngine(url, storage_options=options).run("run")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
state = run.load()
print(json.dumps({"state": state, "grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


@pytest.mark.s3
def test_an_oversized_payload_object_on_s3_is_refused_unread_and_the_previous_checkpoint_loads(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    """A payload object replaced by one of 64 MiB (its manifest says a few bytes) was downloaded whole by
    load() (+1.09 GB for a 300 MB object). Now at most the manifest's size plus one byte is read: the
    checkpoint is damaged, the previous one loads, and the loading process (a child, measured by its own
    peak RSS) grows by far less than the object."""
    import json
    import subprocess
    import sys

    url = f"{s3_bucket}/store"
    run = CheckpointEngine(url, storage_options=s3_server.storage_options).run("run")
    for step in range(2):
        run.save({"step": step}, step=step)
    run.fs.pipe_file(f"{run.path}/step_1/state.json", b"7" * (64 * 1024 * 1024))
    done = subprocess.run([sys.executable, "-c", _LOAD_PEAK, url, json.dumps(s3_server.storage_options)],
                          capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["state"] == {"step": 0}, done.stderr
    assert "step_1/state.json is more bytes" in done.stderr, done.stderr  # the fallback's warning
    assert result["grew_kib"] < 16 * 1024, result  # a 64 MiB object, never read


def test_a_deeply_nested_json_payload_under_a_forged_manifest_is_damaged_and_the_previous_loads(
    tmp_path: Path
) -> None:
    """state.json rewritten as '[[[[...' with its manifest re-signed to match (the manifest's checksum only
    proves it is whole): json raised RecursionError out of load()."""
    import json

    from grd_blocks.checkpoint.payload import manifest as manifest_module
    from grd_blocks.checkpoint.payload.digest import digest_later

    _, run = _store(tmp_path)
    step = Path(run.path) / "step_2"
    deep = b"[" * 5000
    (step / "state.json").write_bytes(deep)
    obj = json.loads((step / "MANIFEST.json").read_bytes())
    obj.pop("checksum")
    obj["files"]["state.json"] = digest_later(deep, "sha256")().to_json()  # digests that match
    (step / "MANIFEST.json").write_bytes(manifest_module._dump(obj))
    assert run.load() == {"step": 1}


def test_a_latest_pointer_naming_a_checkpoint_outside_its_run_is_damaged_and_the_newest_valid_is_used(
    backend: Backend,
) -> None:
    """A re-signed LATEST.json whose dirname is '../../other/run/step_2': on S3 latest() and load() raised
    StoreUnavailable instead of falling back; locally the read walked out of the run folder before refusing.
    Now the pointer itself is damaged (its dirname is not its own unit_index): nothing outside is read."""
    import json

    from grd_blocks.checkpoint.payload import manifest as manifest_module

    run = backend.run("run")
    other = backend.run("other")
    for step in range(2):
        run.save({"step": step}, step=step)
    other.save({"step": "not ours"}, step=2)
    pointer = f"{run.path}/LATEST.json"
    obj = json.loads(run.fs.cat_file(pointer))
    obj.pop("checksum")
    obj.update(dirname="../../other/run/step_2", index=2)
    run.fs.pipe_file(pointer, manifest_module._dump(obj))
    latest = run.latest()
    assert latest is not None and latest.index == 1 and run.load() == {"step": 1}


def test_a_forged_manifest_claiming_a_huge_json_payload_is_refused_before_a_byte_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 10 GiB sparse state.json under a re-signed manifest that says so: load() read it whole (20.7 GB of
    RSS for 67 s). A JSON payload over MAX_JSON_BYTES is never written, so such a claim is damage: refused
    before reading, and the previous checkpoint loads."""
    import json

    from grd_blocks.checkpoint.payload import manifest as manifest_module

    _, run = _store(tmp_path)
    step = Path(run.path) / "step_2"
    huge = 10 * 1024**3
    with open(step / "state.json", "r+b") as handle:
        handle.truncate(huge)  # sparse: no disk used
    obj = json.loads((step / "MANIFEST.json").read_bytes())
    obj.pop("checksum")
    obj["files"]["state.json"].update(size=huge, chunk_size=huge)  # one chunk: the entry is well-formed
    (step / "MANIFEST.json").write_bytes(manifest_module._dump(obj))
    with caplog.at_level(logging.WARNING, logger="grd.checkpoint"):
        assert run.load() == {"step": 1}
    assert f"its manifest says {huge} bytes, more than any JSON payload grd writes" in caplog.text


def test_a_plain_state_too_large_for_a_json_payload_is_saved_with_torch_and_loads_back(
    tmp_path: Path,
) -> None:
    from grd_blocks.checkpoint.payload.serialization import MAX_JSON_BYTES

    run = CheckpointEngine(str(tmp_path / "store")).run("run")
    state = {"notes": "x" * (MAX_JSON_BYTES + 1), "step": 3}
    run.save(state, step=3)
    assert sorted(os.listdir(Path(run.path) / "step_3")) == ["MANIFEST.json", "state.pt"]
    assert run.load() == state
