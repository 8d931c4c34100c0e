"""A writer process SIGKILLed at a random moment never leaves the store without a sound latest checkpoint.

Each trial forks a real writer that resumes from ``latest()`` and commits ``state_for(i)`` as step ``i`` in a
loop (retention ``keep_last=2`` deletes as it goes), kills it with SIGKILL at a uniform random moment once
its first save has begun (over a window of ~1.5 saves), then checks in
a fresh reader that ``latest()`` loads and equals exactly one fully committed save: at least the last one the
writer reported as returned, at most the one it was writing. 200 trials per backend.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grd_blocks.checkpoint import RunCheckpoints
from tests.checkpoint_faults._states import state_for
from tests.checkpoint_faults.crash_harness import KillWindow, WriterZygote, kill_trial
from tests.fixtures.seaweed import SeaweedServer

TRIALS = int(os.environ.get("GRD_CRASH_TRIALS", "200"))  # per backend; lower it only for local runs
STATE_SIZE = 2048


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WriterZygote]:
    writer = WriterZygote(tmp_path_factory.mktemp("zygote"))
    try:
        yield writer
    finally:
        writer.close()


def _run_trials(
    zygote: WriterZygote, workdir: Path, url: str, storage_options: dict[str, Any]
) -> None:
    rng = random.Random(20261123)
    window = KillWindow(initial_s=0.05)
    killed_mid_save = 0
    newest_seen = -1
    reader = RunCheckpoints.from_url(url, storage_options=storage_options)
    for trial in range(TRIALS):
        request = {
            "url": url,
            "storage_options": storage_options,
            "progress": str(workdir / f"progress-{trial}.txt"),
            "log": str(workdir / f"writer-{trial}.log"),
            "keep_last": 2,
            "size": STATE_SIZE,
        }
        progress = kill_trial(zygote, request, rng, window.seconds)
        window.observe(progress)
        if progress.last_begun is not None and progress.last_begun != progress.last_done:
            killed_mid_save += 1
        ref = reader.latest()
        lowest, highest = progress.lowest_acceptable, progress.highest_acceptable
        context = f"trial {trial}: writer reported {progress}; latest() is {ref}"
        if lowest is None:
            assert ref is None or (highest is not None and ref.index <= highest), context
        else:
            assert ref is not None, context
            assert highest is not None
            assert lowest <= ref.index <= highest, context
        if ref is None:
            assert reader.load() is None, context
            continue
        assert reader.load() == state_for(ref.index, STATE_SIZE), context
        newest_seen = max(newest_seen, ref.index)
    # the trials exercised something: kills landed inside saves, and the run advanced across crashes
    assert killed_mid_save > TRIALS // 2, f"only {killed_mid_save} of {TRIALS} kills landed inside a save"
    assert newest_seen > 0, "no save ever committed: the kill window never spanned a whole save"


def test_sigkilled_writer_leaves_a_committed_latest_on_local_disk(
    zygote: WriterZygote, tmp_path: Path
) -> None:
    _run_trials(zygote, tmp_path, str(tmp_path / "store" / "run-local"), {})


@pytest.mark.s3
@pytest.mark.slow
def test_sigkilled_writer_leaves_a_committed_latest_on_s3(
    zygote: WriterZygote, s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    _run_trials(zygote, tmp_path, f"{s3_bucket}/store/run-s3", s3_server.storage_options)
