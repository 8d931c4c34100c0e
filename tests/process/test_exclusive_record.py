"""A newly taken lock never shows an earlier holder: its record is blanked and a stop mark left for it is
cleared, even when the earlier record was longer than the new one (the file is overwritten in place, never
truncated), so a later start can only signal the keeper that holds the lock now."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grd_blocks.process import exclusive
from grd_blocks.process.exclusive import RECORD_BYTES, claim
from grd_blocks.process.supervisor.keeper import STOP_MARK, STOP_MARK_OFFSET


def _holder_seen(path: Path) -> dict[str, object]:
    """What a later start reads from the lock file (its own descriptor, as a separate process would)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return exclusive._holder(fd)
    finally:
        os.close(fd)


def test_a_taken_lock_shows_no_earlier_holder_and_no_stop_mark(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRD_RUNTIME_DIR", str(tmp_path))
    path = tmp_path / "run" / "p.c.lock"
    path.parent.mkdir()
    earlier = {"keeper": os.getpid(), "start": 1, "grace": 9.0, "label": "x" * 3000, "since": 0.0}
    with path.open("wb") as lock:  # a holder that died: a long record, and a start that marked it then died
        lock.write(json.dumps(earlier).encode())
        lock.seek(STOP_MARK_OFFSET)
        lock.write(STOP_MARK)
    held = claim("run/p.c")
    try:
        assert _holder_seen(path) == {}
        assert os.pread(held.fd, len(STOP_MARK), STOP_MARK_OFFSET) != STOP_MARK
        held.record(keeper_pid=os.getpid(), grace_s=2.5, label="p.c")
        seen = _holder_seen(path)
        assert seen["keeper"] == os.getpid() and seen["grace"] == 2.5 and seen["label"] == "p.c"
    finally:
        held.close()


@pytest.mark.parametrize("char", ["y", "\u00e9", "\U0001f600"])  # 1, 6 and 12 bytes a character in JSON
def test_a_label_longer_than_the_record_is_cut_and_the_record_still_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, char: str
) -> None:
    monkeypatch.setenv("GRD_RUNTIME_DIR", str(tmp_path))
    held = claim("run/long")
    try:
        held.record(keeper_pid=os.getpid(), grace_s=1.0, label=char * (2 * RECORD_BYTES))
        seen = _holder_seen(tmp_path / "run" / "long.lock")
        assert seen["keeper"] == os.getpid() and str(seen["label"]).startswith(char * 3)
    finally:
        held.close()
