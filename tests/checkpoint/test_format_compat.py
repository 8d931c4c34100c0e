"""The manifest compatibility rule: a grd reads every format an earlier grd wrote and refuses a newer one with
CheckpointTooNew (the format, the grd that wrote it, the upgrade), never as damage, so a downgraded reader
never resumes from an older checkpoint than the newest one."""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import pytest
import torch

from grd_blocks import CheckpointTooNew
from grd_blocks.checkpoint import CheckpointEngine, RunCheckpoints
from grd_blocks.checkpoint.payload.manifest import FORMAT_VERSION, GRD_VERSION, READ_VERSIONS, parse_manifest
from grd_blocks.errors import CheckpointCorrupt


def _run(root: pathlib.Path) -> RunCheckpoints:
    return CheckpointEngine(str(root / "store")).run("run")


def _state(seed: int) -> dict[str, torch.Tensor]:
    return {"w": torch.arange(1000, dtype=torch.float32) + seed}


def _rewrite(path: pathlib.Path, **changes: Any) -> None:
    """Rewrite a manifest with ``changes`` (``None`` drops a key), checksummed as grd writes it."""
    manifest = json.loads(path.read_bytes())
    manifest.pop("checksum")
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(json.dumps({**manifest, "checksum": hashlib.sha256(canonical).hexdigest()}, indent=1,
                                sort_keys=True).encode())


def _manifest(root: pathlib.Path, step: int) -> pathlib.Path:
    return root / "store" / "run" / f"step_{step}" / "MANIFEST.json"


def test_every_manifest_records_the_grd_that_wrote_it(tmp_path: pathlib.Path) -> None:
    _run(tmp_path).save(_state(1), step=1)
    manifest = json.loads(_manifest(tmp_path, 1).read_bytes())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["grd_version"] == GRD_VERSION
    assert max(READ_VERSIONS) == FORMAT_VERSION and tuple(range(1, FORMAT_VERSION + 1)) == READ_VERSIONS


def test_a_newer_format_names_the_format_the_grd_that_reads_it_and_the_fix(tmp_path: pathlib.Path) -> None:
    run = _run(tmp_path)
    run.save(_state(1), step=1)
    _rewrite(_manifest(tmp_path, 1), format_version=FORMAT_VERSION + 1, grd_version="9.4.0")
    with pytest.raises(CheckpointTooNew) as raised:
        run.load(step=1)
    message = str(raised.value)
    assert f"is format {FORMAT_VERSION + 1} and grd 9.4.0 wrote it" in message
    assert f"this grd ({GRD_VERSION}) reads manifest formats 1-{FORMAT_VERSION} only" in message
    assert "pip install -U 'grd>=9.4.0'" in message
    assert not isinstance(raised.value, CheckpointCorrupt)
    problems = run.verify("step_1")
    assert len(problems) == 1 and "pip install -U 'grd>=9.4.0'" in problems[0]


def test_a_newer_format_without_a_version_asks_for_a_newer_grd(tmp_path: pathlib.Path) -> None:
    run = _run(tmp_path)
    run.save(_state(1), step=1)
    _rewrite(_manifest(tmp_path, 1), format_version=FORMAT_VERSION + 1, grd_version=None)
    with pytest.raises(CheckpointTooNew, match=r"a grd newer than this one wrote it.*\(pip install -U grd\)"):
        run.load(step=1)


def test_a_version_field_that_is_not_a_version_is_never_quoted(tmp_path: pathlib.Path) -> None:
    run = _run(tmp_path)
    run.save(_state(1), step=1)
    _rewrite(_manifest(tmp_path, 1), format_version=FORMAT_VERSION + 1, grd_version="1'; rm -rf / #")
    with pytest.raises(CheckpointTooNew, match=r"a grd newer than this one wrote it"):
        run.load(step=1)


def test_a_newer_format_checkpoint_is_never_skipped_for_an_older_one(tmp_path: pathlib.Path) -> None:
    run = _run(tmp_path)
    run.save(_state(1), step=1)
    run.save(_state(2), step=2)
    _rewrite(_manifest(tmp_path, 2), format_version=FORMAT_VERSION + 1, grd_version="9.4.0")
    with pytest.raises(CheckpointTooNew):
        run.load()  # a damaged step 2 would fall back to step 1; a newer grd's step 2 must not
    with pytest.raises(CheckpointTooNew):
        run.latest()
    with pytest.raises(CheckpointTooNew):
        run.checkpoints()


def test_a_format_the_grd_never_wrote_below_the_first_is_damage(tmp_path: pathlib.Path) -> None:
    run = _run(tmp_path)
    run.save(_state(1), step=1)
    for bad in (0, -1, True, "2"):
        _rewrite(_manifest(tmp_path, 1), format_version=bad)
        with pytest.raises(CheckpointCorrupt, match="format_version"):
            parse_manifest(_manifest(tmp_path, 1).read_bytes(), "M")
