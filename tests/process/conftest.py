"""Fixtures for the process tests: both containments, and a pid directory cleaned up at teardown.

Every test that starts a tree records its pids in files (the children write them); ``pid_dir`` kills whatever
is still running from that directory at teardown, so a failing test never leaks processes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from grd_blocks.process.tree import FORCE_FALLBACK_ENV
from tests.process.helpers import cgroup_available, recorded_pids, running


@pytest.fixture(params=["cgroup", "subreaper"])
def containment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test under each containment; ``cgroup`` is skipped where no writable cgroup2 exists."""
    kind = str(request.param)
    if kind == "cgroup":
        monkeypatch.delenv(FORCE_FALLBACK_ENV, raising=False)
        if not cgroup_available():
            pytest.skip("no writable cgroup2 hierarchy here; the subreaper variant covers this host")
    else:
        monkeypatch.setenv(FORCE_FALLBACK_ENV, "1")
    return kind


@pytest.fixture
def pid_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "pids"
    directory.mkdir()
    yield directory
    for pid in recorded_pids(directory).values():
        if running(pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"tree_child" in cmdline or b"sleep" in cmdline:
                os.kill(pid, signal.SIGKILL)
