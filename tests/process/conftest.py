"""Fixtures for the process tests: every containment mode, and a pid directory whose marker is swept at
teardown.

Every test tree carries its pid directory in each member's command line; ``pid_dir`` kills whatever still
carries that marker at teardown (never by name), and removes the cgroups the escape tests made, so a failing
test never leaks processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from grd_blocks.process.keepers import CONTAINMENT_ENV, FORCE_FALLBACK_ENV
from tests.process.helpers import ESCAPED_CGROUPS, marked, mode_problem


@pytest.fixture(params=["namespace", "cgroup", "subreaper"])
def containment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test under each containment mode; a mode this host does not allow is skipped, naming why."""
    mode = str(request.param)
    monkeypatch.delenv(FORCE_FALLBACK_ENV, raising=False)
    monkeypatch.setenv(CONTAINMENT_ENV, mode)
    problem = mode_problem(mode)
    if problem is not None:
        pytest.skip(f"this host cannot contain commands in {mode} mode: {problem}")
    return mode


@pytest.fixture
def pid_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "pids"
    directory.mkdir()
    yield directory
    for pid in marked(str(directory)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    from grd_blocks.process.cgroup import cgroup2_mount, remove

    made = directory / ESCAPED_CGROUPS
    if cgroup2_mount() is not None and made.exists():
        for escape in made.read_text().split():
            remove(Path(escape))  # only this test's: tests on other workers make theirs at the same time
