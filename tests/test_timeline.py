"""GRD_TIMELINE: a process given it appends one line per stage it reaches, on the host's monotonic clock; a
process without it writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

MARKS = "from grd_blocks.timeline import mark; mark('first'); mark('second')"


def test_each_stage_is_one_line_on_the_hosts_monotonic_clock(tmp_path: Path) -> None:
    timeline = tmp_path / "timeline"
    before = time.monotonic()
    env = dict(os.environ, GRD_TIMELINE=str(timeline))
    subprocess.run([sys.executable, "-c", MARKS], env=env, check=True)
    after = time.monotonic()
    rows = [line.split() for line in timeline.read_text().splitlines()]
    assert [name for name, _ in rows] == ["first", "second"]
    stamps = [float(at) for _, at in rows]
    assert before <= stamps[0] <= stamps[1] <= after


def test_without_the_variable_nothing_is_written(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name != "GRD_TIMELINE"}
    subprocess.run([sys.executable, "-c", MARKS], env=env, cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []
