"""Sharded checkpoints (sharded.py): one manifest-last commit for all ranks, verification with one agreed
fallback, resharding N -> M of an FSDP2 model and its optimizer, and kill trials.

The multi-rank tests start real rank processes (gloo on CPU, tests/checkpoint/sharded_procs.py); faults are
real (a flipped bit on disk, SIGKILL of a rank). What was committed is judged by ``independent_check``, a
reader written here from the documented format (docs/design.md, "Checkpoint store") that shares no code with
the writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from blake3 import blake3  # a dependency of grd

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import CheckpointCorrupt, CheckpointError, UsageError
from tests.checkpoint import sharded_kills, sharded_procs


# ------------------------------------------------------------------------------------ the independent reader
def _digest(algorithm: str, data: bytes) -> str:
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()
    assert algorithm == "blake3"
    return str(blake3(data).hexdigest())


def _file_problem(data: bytes, entry: dict[str, Any], path: Path | str) -> str | None:
    if len(data) != entry["size"]:
        return f"{path}: {len(data)} bytes, manifest says {entry['size']}"
    algorithm, step = entry["digest"], entry["chunk_size"]
    chunks = [_digest(algorithm, data[start:start + step]) for start in range(0, len(data), step)]
    if chunks != entry["chunks"]:
        return f"{path}: chunk digests differ"
    if _digest(algorithm, b"".join(bytes.fromhex(chunk) for chunk in chunks)) != entry["hash"]:
        return f"{path}: whole-file hash differs"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Whether a visible checkpoint folder is whole: a manifest whose checksum holds, listing exactly the
    files there (besides itself), each of the listed size and digests, DCP's .metadata among them."""
    manifest_path = folder / "MANIFEST.json"
    if not manifest_path.is_file():
        return f"{folder}: no MANIFEST.json"
    obj = json.loads(manifest_path.read_bytes())
    checksum = obj.pop("checksum")
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    if hashlib.sha256(canonical).hexdigest() != checksum:
        return f"{manifest_path}: checksum fails"
    present = {entry.name for entry in folder.iterdir()} - {"MANIFEST.json"}
    if present != set(obj["files"]):
        return f"{folder}: holds {sorted(present)}, manifest lists {sorted(obj['files'])}"
    if obj["payload_format"] != "dcp" or ".metadata" not in present:
        return f"{folder}: not a sharded checkpoint"
    for name, entry in obj["files"].items():
        problem = _file_problem((folder / name).read_bytes(), entry, folder / name)
        if problem:
            return problem
    return None


def independent_check(run: Path) -> dict[str, Any]:
    """Every visible ``step_N`` folder of ``run`` judged on its own, and where LATEST.json points."""
    visible = sorted((entry for entry in run.iterdir() if entry.name.startswith("step_")),
                     key=lambda entry: int(entry.name.split("_")[1]))
    torn = {entry.name: problem for entry in visible if (problem := checkpoint_problem(entry)) is not None}
    latest = json.loads((run / "LATEST.json").read_bytes()) if (run / "LATEST.json").exists() else None
    return {
        "visible": [entry.name for entry in visible],
        "torn": torn,
        "latest": latest["dirname"] if latest else None,
        "latest_index": latest["index"] if latest else -1,
        "staging": sorted(entry.name for entry in run.iterdir() if entry.name.startswith(".tmp-step_")),
    }


# ------------------------------------------------------------------------------------ in one process
def test_single_process_round_trip_and_plain_load_refuses_a_sharded_checkpoint(tmp_path: Path) -> None:
    run = RunCheckpoints.from_url(str(tmp_path / "run"))
    state: dict[str, Any] = {"weights": torch.arange(6.0), "extra": {"epoch": 3}}
    ref = run.save_sharded(state, step=4, metrics={"loss": 1.5})
    assert ref.name == "step_4" and ref.metrics == {"loss": 1.5} and run.latest() == ref
    assert checkpoint_problem(tmp_path / "run" / "step_4") is None and run.verify(ref) == []
    state = {"weights": torch.zeros(6), "extra": {"epoch": -1}}
    assert run.load_sharded(state) == ref
    assert torch.equal(state["weights"], torch.arange(6.0)) and state["extra"] == {"epoch": 3}
    with pytest.raises(UsageError, match=r"sharded checkpoint.*load_sharded"):
        run.load()
    run.save({"plain": 1}, step=5)
    with pytest.raises(UsageError, match=r"single-file checkpoint.*load\(\)"):
        run.load_sharded(state)
    _flip_bit(tmp_path / "run" / "step_4" / "__0_0.distcp", seed=3)
    problems = run.verify("step_4")  # what `grd checkpoints verify` reports, one file read at a time
    assert len(problems) == 1 and "step_4/__0_0.distcp" in problems[0], problems


def test_every_shard_is_fsynced_before_the_manifest_that_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut cannot be caused here, so the calls are watched instead: ``os.fsync`` is wrapped to note
    which file each descriptor names (/proc/self/fd) and then does its work. Every shard file of the
    committed checkpoint was fsynced in its staging folder, and before the manifest was."""
    synced: list[str] = []
    real_fsync = os.fsync

    def noting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    run = RunCheckpoints.from_url(str(tmp_path / "run"))
    state = {"weights": torch.arange(3 * 2**20, dtype=torch.float32), "extra": {"epoch": 1}}
    ref = run.save_sharded(state, step=1)
    monkeypatch.undo()
    folder = tmp_path / "run" / ref.name
    assert checkpoint_problem(folder) is None
    names = [name for name in os.listdir(folder) if name.endswith(".distcp")]
    manifest_at = next(i for i, path in enumerate(synced) if path.endswith("/MANIFEST.json"))
    for name in names:
        at = [i for i, path in enumerate(synced) if "/.tmp-step_1-" in path and path.endswith(f"/{name}")]
        assert at and at[0] < manifest_at, (name, synced)


def _resident_pages(path: Path) -> tuple[int, int]:
    """How many of ``path``'s pages the page cache holds, and how many it has: the kernel's own answer
    (mincore(2) on a private mapping, which reads no page in)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    size, page = path.stat().st_size, os.sysconf("SC_PAGE_SIZE")
    pages = (size + page - 1) // page
    vector = (ctypes.c_ubyte * pages)()
    with path.open("rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as mapping:
        view = (ctypes.c_char * size).from_buffer(mapping)
        try:
            assert libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size), vector) == 0
        finally:
            del view
    return sum(flags & 1 for flags in vector), pages


def test_a_committed_shard_leaves_the_page_cache_unless_direct_io_is_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = RunCheckpoints.from_url(str(tmp_path / "run"))
    state = {"weights": torch.arange(3 * 2**20, dtype=torch.float32)}  # 12 MiB
    dropped = run.save_sharded(state, step=1)
    monkeypatch.setenv("GRD_CHECKPOINT_DIRECT_IO", "0")
    kept = run.save_sharded(state, step=2)
    for ref, expect_cached in ((dropped, False), (kept, True)):
        shards = sorted((tmp_path / "run" / ref.name).glob("*.distcp"))
        assert shards
        for shard in shards:
            resident, pages = _resident_pages(shard)
            assert pages > 3_000 and (resident == pages if expect_cached else resident == 0), (
                ref.name, shard.name, resident, pages)
    assert run.load_sharded({"weights": torch.zeros(3 * 2**20)}) == kept


def test_no_checkpoint_loads_nothing_and_leaves_the_state_alone(tmp_path: Path) -> None:
    state: dict[str, Any] = {"weights": torch.ones(2)}
    assert RunCheckpoints.from_url(str(tmp_path / "run")).load_sharded(state) is None
    assert torch.equal(state["weights"], torch.ones(2))


def test_forged_metadata_is_never_unpickled_and_the_previous_checkpoint_loads(tmp_path: Path) -> None:
    """A store attacker rewrites .metadata with a pickle that would run code, and the manifest to match it
    (its checksum is not a signature): the global is refused, the checkpoint counts as damaged."""
    run = RunCheckpoints.from_url(str(tmp_path / "run"))
    run.save_sharded({"weights": torch.full((3,), 1.0)}, step=1)
    run.save_sharded({"weights": torch.full((3,), 2.0)}, step=2)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "run" / "step_2"
    forged = pickle.dumps(Exploit())
    (folder / ".metadata").write_bytes(forged)
    manifest = json.loads((folder / "MANIFEST.json").read_bytes())
    manifest.pop("checksum")
    algorithm = manifest["files"][".metadata"]["digest"]
    chunk = _digest(algorithm, forged)
    manifest["files"][".metadata"].update(size=len(forged), chunks=[chunk],
                                          hash=_digest(algorithm, bytes.fromhex(chunk)))
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest["checksum"] = hashlib.sha256(canonical).hexdigest()
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    assert run.verify("step_2") == []  # the bytes match the (forged) manifest
    state: dict[str, Any] = {"weights": torch.zeros(3)}
    ref = run.load_sharded(state)
    assert ref is not None and ref.name == "step_1" and torch.equal(state["weights"], torch.full((3,), 1.0))
    assert not marker.exists()
    with pytest.raises(CheckpointCorrupt, match=r"os.*system.*not one of DCP's metadata types"):
        run.load_sharded(state, step=2)


def test_a_failed_save_leaves_nothing_visible_and_the_same_error_on_its_rank(tmp_path: Path) -> None:
    run = RunCheckpoints.from_url(str(tmp_path / "run"))
    run.save_sharded({"weights": torch.ones(2)}, step=1)
    with pytest.raises(CheckpointError):
        run.save_sharded({"weights": torch.ones(2), "bad": lambda: None}, step=2)
    assert independent_check(tmp_path / "run") == {"visible": ["step_1"], "torn": {}, "latest": "step_1",
                                                    "latest_index": 1, "staging": []}


# ------------------------------------------------------------------------------------ real ranks
SHARD = 3 * 2**17
"""Elements of each rank's shard when 2 ranks save (1.5 MiB); the whole tensor splits evenly on 1, 2, 3."""


@pytest.mark.torch_procs
def test_fsdp2_model_and_optimizer_saved_on_2_ranks_load_on_1_and_on_3(tmp_path: Path) -> None:
    store, reference = str(tmp_path / "run"), str(tmp_path / "full.pt")
    saved = sharded_procs.run(2, "fsdp_save", store, "3", reference)
    assert [result["saved"] for result in saved.results] == ["step_3", "step_3"]
    found = independent_check(tmp_path / "run")
    assert found["torn"] == {} and found["latest"] == "step_3" and found["staging"] == []
    manifest = json.loads((tmp_path / "run" / "step_3" / "MANIFEST.json").read_bytes())
    assert sorted(manifest["files"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert manifest["metadata"]["world_size"] == 2
    for world in (1, 3):
        loaded = sharded_procs.run(world, "fsdp_load", store, reference)
        assert [(r["loaded"], r["extra"], r["mismatched"]) for r in loaded.results] == [
            ("step_3", {"step": 3}, [])] * world


@pytest.mark.torch_procs
def test_fsdp2_model_and_optimizer_saved_on_1_rank_load_on_2(tmp_path: Path) -> None:
    store, reference = str(tmp_path / "run"), str(tmp_path / "full.pt")
    sharded_procs.run(1, "fsdp_save", store, "2", reference)
    loaded = sharded_procs.run(2, "fsdp_load", store, reference)
    assert [(r["loaded"], r["mismatched"]) for r in loaded.results] == [("step_2", [])] * 2


def _flip_bit(path: Path, seed: int) -> None:
    data = bytearray(path.read_bytes())
    position = random.Random(seed).randrange(len(data))
    data[position] ^= 1 << random.Random(seed + 1).randrange(8)
    path.write_bytes(bytes(data))


@pytest.mark.torch_procs
@pytest.mark.parametrize("damaged", ["__0_0.distcp", "__1_0.distcp", ".metadata"])
def test_a_flipped_bit_in_any_file_sends_every_rank_to_the_same_previous_checkpoint(
    tmp_path: Path, damaged: str
) -> None:
    store = str(tmp_path / "run")
    sharded_procs.run(2, "save_steps", store, "1000", "1,2")
    _flip_bit(tmp_path / "run" / "step_2" / damaged, seed=len(damaged))
    loaded = sharded_procs.run(2, "load_latest", store, "1000")
    assert [(r["rank"], r["loaded"], r["values"], r["step"]) for r in loaded.results] == [
        (0, "step_1", [1.0], 1), (1, "step_1", [1.0], 1)]
    lines = [line for log in loaded.logs for line in log.splitlines() if line.startswith("LOG ")]
    assert len(lines) == 1, lines  # one line, from rank 0, for all ranks
    assert f"step_2/{damaged}" in lines[0] and "all 2 ranks fall back to" in lines[0]
    assert lines[0].endswith("/run/step_1") and lines[0] in loaded.logs[0]


def _local_judge(run: Path) -> sharded_kills.Judged:
    found = independent_check(run)
    return sharded_kills.Judged(found["torn"], found["latest"], found["latest_index"],
                                found["latest"] in found["visible"], bool(found["staging"]))


@pytest.mark.torch_procs
@pytest.mark.parametrize(
    "trials", [4, pytest.param(100, marks=[pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(1800)])]
)
def test_ranks_sigkilled_at_random_moments_of_sync_and_async_saves_never_leave_a_torn_checkpoint(
    tmp_path: Path, trials: int
) -> None:
    """Kill trials (tests/checkpoint/sharded_kills.py): synchronous and async saves alternate, one rank or
    both are SIGKILLed at a random moment; the independent reader finds no torn checkpoint and LATEST.json
    naming a whole one, never moving backwards; the latest loads on 1 rank after every trial, on 2 every
    tenth (and the last)."""
    store = tmp_path / "run"
    summary = sharded_kills.run_trials(trials, 33, str(store), SHARD, lambda: _local_judge(store))
    assert summary["left an uncommitted save"] > 0 or trials < 10  # the kills did land inside saves


def test_sharded_saves_number_themselves_and_retention_keeps_the_newest(tmp_path: Path) -> None:
    run = RunCheckpoints.from_url(str(tmp_path / "run"), keep_last=2)
    refs = [run.save_sharded({"weights": torch.full((2,), float(n))}) for n in range(4)]
    assert [ref.name for ref in refs] == ["step_0", "step_1", "step_2", "step_3"]
    found = independent_check(tmp_path / "run")
    assert found == {"visible": ["step_2", "step_3"], "torn": {}, "latest": "step_3", "latest_index": 3,
                     "staging": []}


def test_bytes_changed_after_the_shared_verification_are_refused_by_the_rank_that_reads_them(
    tmp_path: Path,
) -> None:
    """The window between the ranks' shared verification and DCP's read, reached by calling the reader
    load_sharded hands to DCP with the checkpoint as it was verified, after a shard changed on disk: the
    reading rank hashes the very descriptor DCP reads, and refuses it."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict_loader import load

    from grd_blocks.checkpoint.sharded import _Candidate, _planner, _reader

    run = RunCheckpoints.from_url(str(tmp_path / "run"))
    ref = run.save_sharded({"weights": torch.arange(4.0)}, step=1)
    verified = _Candidate(ref, run._read_manifest("step_1"))
    assert run.verify(ref) == []
    _flip_bit(tmp_path / "run" / "step_1" / "__0_0.distcp", seed=5)
    state: dict[str, Any] = {"weights": torch.zeros(4)}
    with pytest.raises(CheckpointException) as caught:
        load(state, storage_reader=_reader(run, verified), planner=_planner(), no_dist=True)
    failures = [failure for failure, _ in caught.value.failures.values()]
    assert any(isinstance(failure, CheckpointCorrupt) and "step_1/__0_0.distcp" in str(failure)
               for failure in failures), failures
    assert torch.equal(state["weights"], torch.zeros(4))
