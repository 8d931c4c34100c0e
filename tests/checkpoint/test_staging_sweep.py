"""Staging entries left by crashed local writers are swept after the next successful save; live ones stay."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.checkpoint.storage.staging import STALE_AFTER_S, staging_name, sweep_stale, writer_tag

REPO = pathlib.Path(__file__).resolve().parents[2]

CRASHING_WRITER = """
import os, sys
from fsspec.implementations.local import LocalFileSystem
from grd_blocks.checkpoint.storage.commit import RenameCommit

def crash(objects) -> bytes:
    os._exit(9)  # the process dies after the payload is written, before its manifest

RenameCommit(LocalFileSystem()).commit(sys.argv[1], {"state.json": b'{"a": 1}'}, crash)
"""


def _age(path: pathlib.Path, seconds: float) -> None:
    when = time.time() - seconds
    for item in [path, *path.iterdir()] if path.is_dir() else [path]:
        os.utime(item, (when, when))


def _crashing_writer(target: pathlib.Path) -> subprocess.Popen[str]:
    """A process that stages a save of ``target`` and dies (exit code 9) before its manifest is written."""
    return subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(target)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
    )


def test_save_sweeps_the_staging_dir_of_a_writer_that_died(tmp_path: pathlib.Path) -> None:
    run = CheckpointEngine(str(tmp_path / "store")).run("run")
    run.save({"a": 0}, step=0)
    run_dir = tmp_path / "store" / "run"
    writer = _crashing_writer(run_dir / "step_1")
    _, stderr = writer.communicate(timeout=120)
    assert writer.returncode == 9, stderr
    left = [name for name in os.listdir(run_dir) if name.startswith(".tmp-step_1-")]
    assert len(left) == 1 and (run_dir / left[0] / "state.json").is_file()
    assert left[0].endswith(f"-{writer_tag()}-{writer.pid}")  # the dead writer is named in the entry
    latest = run.latest()
    assert latest is not None and latest.index == 0

    run.save({"a": 2}, step=2)
    assert sorted(os.listdir(run_dir)) == ["LATEST.json", "step_0", "step_2"]


def test_save_sweeps_the_staging_dir_of_a_killed_writer_not_yet_reaped(tmp_path: pathlib.Path) -> None:
    run = CheckpointEngine(str(tmp_path / "store")).run("run")
    run.save({"a": 0}, step=0)
    run_dir = tmp_path / "store" / "run"
    writer = _crashing_writer(run_dir / "step_1")
    try:
        # wait for the writer to exit, without reaping it: a zombie, as under an init that does not reap
        os.waitid(os.P_PID, writer.pid, os.WEXITED | os.WNOWAIT)
        with open(f"/proc/{writer.pid}/stat") as stat:
            assert stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        run.save({"a": 2}, step=2)
        assert sorted(os.listdir(run_dir)) == ["LATEST.json", "step_0", "step_2"]
    finally:
        writer.wait(timeout=120)


def test_sweep_removes_an_entry_whose_pid_now_names_a_later_process_and_keeps_a_live_writers(
    tmp_path: pathlib.Path,
) -> None:
    later = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        tag = writer_tag()
        reused = run_dir / f".tmp-step_3-0123456789ab-{tag}-{later.pid}"  # written before `later` started
        live = run_dir / f".tmp-step_4-0123456789ab-{tag}-{later.pid}"  # written by `later`, still running
        for path in (reused, live):
            path.mkdir()
            (path / "state.json").write_text("{}")
        _age(reused, STALE_AFTER_S / 2)  # old, but not old enough for the age rule
        assert sweep_stale(str(run_dir)) == [reused.name]
        assert live.is_dir()
    finally:
        assert later.stdin is not None
        later.stdin.close()
        later.wait(timeout=120)


def test_sweep_keeps_live_and_recent_entries_and_removes_old_unknown_ones(tmp_path: pathlib.Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    entries = {
        "live": run_dir / staging_name(".tmp-", "step_3"),  # this process: a writer that is still running
        "recent_foreign": run_dir / ".tmp-step_4-0123456789ab-ffffffff-1",  # another host, just now
        "recent_legacy": run_dir / ".old-step_5-abc",  # no writer recorded, just now
        "old_foreign": run_dir / ".tmp-step_6-0123456789ab-ffffffff-1",
        "old_legacy_pointer": run_dir / ".tmp-LATEST.json-abc",
        "committed": run_dir / "step_7",
    }
    for key, path in entries.items():
        if key == "old_legacy_pointer":
            path.write_text("{}")
        else:
            path.mkdir()
            (path / "state.json").write_text("{}")
    _age(entries["old_foreign"], STALE_AFTER_S + 60)
    _age(entries["old_legacy_pointer"], STALE_AFTER_S + 60)
    _age(entries["committed"], STALE_AFTER_S * 10)
    if writer_tag() == "ffffffff":  # pragma: no cover - 1 in 4 billion
        return

    removed = sweep_stale(str(run_dir))

    assert sorted(removed) == sorted([entries["old_foreign"].name, entries["old_legacy_pointer"].name])
    assert sorted(os.listdir(run_dir)) == sorted(
        entries[key].name for key in ("live", "recent_foreign", "recent_legacy", "committed")
    )
