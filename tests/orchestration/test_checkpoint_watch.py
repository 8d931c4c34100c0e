"""An attempt's progress is read from its checkpoint prefix in a real local store, before and after it ran: a
timeout that committed nothing newer says so with the fix, and consecutive ones count on."""

from __future__ import annotations

from pathlib import Path

import pytest

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.checkpoint.refs import CheckpointRef
from grd_blocks.orchestration.checkpoint_watch import CheckpointPrefix, judge, watch
from grd_blocks.orchestration.status import Status
from grd_blocks.report import CommandReport, TimeoutInfo


def _stopped(attempt: int, *, level: str = "command") -> CommandReport:
    stop = TimeoutInfo(level=level, configured_s=2.0, effective_s=2.0, inherited=level != "command",
                       term_sent_s=2.0, kill_sent_s=None, survivors=0, stopped_by="grd")
    return CommandReport(name="fit", status=Status.TIMEOUT, returncode=-15, elapsed_s=2.01, attempts=attempt,
                         timeout=stop)


def _prefixes(tmp_path: Path) -> tuple[RunCheckpoints, dict[str, RunCheckpoints]]:
    prefix = RunCheckpoints.from_url(str(tmp_path / "store" / "run-1" / "commands" / "train.fit"))
    return prefix, {"train.fit": prefix}


def test_a_timeout_that_opened_its_checkpoints_but_never_saved_says_so_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix, prefixes = _prefixes(tmp_path)
    seen = watch(prefixes.__getitem__, "train.fit")
    monkeypatch.setenv("GRD_CHECKPOINT_URL", prefix.url)
    RunCheckpoints.from_env()  # what the command did during its attempt: opened, then ran out of time
    assert seen is not None and seen.before is None
    row, line = judge(seen, _stopped(1), None, phase="train")
    assert line is not None and row.note == line
    assert line.startswith("train.fit: stopped by its budget (command deadline, granted 2.0s) after 2.0s "
                           "with no new checkpoint in ")
    assert ("it never saved one there; this attempt made no progress: raise its timeout above the time to "
            "its first checkpoint, or save earlier") in line
    assert row.checkpoints is not None and row.checkpoints.stalled_attempts == 1
    assert not row.checkpoints.committed and row.checkpoints.latest is None


def test_stalled_attempts_count_on_and_name_the_last_first_save(tmp_path: Path) -> None:
    prefix, prefixes = _prefixes(tmp_path)
    seen = watch(prefixes.__getitem__, "train.fit")
    assert seen is not None
    prefix.save({"step": 1}, step=1)  # what the command did during its attempt
    first, line = judge(seen, _stopped(1), None, phase="train")
    assert line is None and first.note is None
    assert first.checkpoints is not None and first.checkpoints.committed
    assert first.checkpoints.latest == "step_1" and first.checkpoints.first_commit_attempt == 1
    assert first.checkpoints.first_commit_s is not None and first.checkpoints.stalled_attempts == 0

    previous = first
    for attempt in (2, 3):
        seen = watch(prefixes.__getitem__, "train.fit")
        assert seen is not None and seen.before is not None and seen.before.name == "step_1"
        previous, line = judge(seen, _stopped(attempt, level="phase"), previous, phase="train")
        assert line is not None and previous.checkpoints is not None
        assert previous.checkpoints.stalled_attempts == attempt - 1
        came = f"attempt 1's first checkpoint came {first.checkpoints.first_commit_s:.1f}s after its start"
        assert came in line
        assert "raise phase train's timeout above the time to its first checkpoint" in line
    assert line is not None and "; no progress in 2 attempts: " in line


def test_a_timeout_of_a_command_that_never_opened_its_checkpoints_is_just_a_timeout(tmp_path: Path) -> None:
    """A plain command (``sleep``, a compiler) stopped by its budget: no stall line, nothing counted."""
    prefix, prefixes = _prefixes(tmp_path)
    seen = watch(prefixes.__getitem__, "train.fit")
    assert seen is not None and not prefix.was_opened()
    row, line = judge(seen, _stopped(1), None, phase="train")
    assert line is None and row.note is None
    assert row.checkpoints is not None and row.checkpoints.stalled_attempts == 0
    assert not row.checkpoints.committed


@pytest.mark.parametrize("opening", ["from_env", "from_url"])
def test_only_opening_the_prefix_grd_gave_leaves_the_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opening: str
) -> None:
    """``from_env()``, or ``from_url($GRD_CHECKPOINT_URL)`` as the examples do; not another URL (a resume
    source), not outside grd."""
    url = str(tmp_path / "store" / "run-1" / "commands" / "p.c")
    RunCheckpoints.from_url(url)
    RunCheckpoints.from_env(default=url)  # outside grd: no GRD_CHECKPOINT_URL
    monkeypatch.setenv("GRD_CHECKPOINT_URL", str(tmp_path / "store" / "run-1" / "commands" / "other"))
    RunCheckpoints.from_url(url)
    assert not RunCheckpoints.from_url(url).was_opened()
    monkeypatch.setenv("GRD_CHECKPOINT_URL", url)
    opened = RunCheckpoints.from_env() if opening == "from_env" else RunCheckpoints.from_url(url)
    RunCheckpoints.from_env()  # a second rank, or a second open: still one empty marker
    marker = tmp_path / "store" / "run-1" / "commands" / "p.c" / ".opened"
    assert opened.was_opened() and marker.stat().st_size == 0
    assert opened.latest() is None and not opened.hints().has_checkpoint  # the marker is not a checkpoint


def test_a_checkpoint_older_than_the_newest_at_start_is_no_progress(tmp_path: Path) -> None:
    prefix, prefixes = _prefixes(tmp_path)
    prefix.save({"step": 5}, step=5)
    seen = watch(prefixes.__getitem__, "train.fit")
    assert seen is not None
    prefix.save({"step": 2}, step=2)  # a command that started over: LATEST stays at step_5
    row, line = judge(seen, _stopped(2), None, phase="train")
    assert line is not None and "its newest checkpoint, step_5, is from before this attempt" in line
    assert row.checkpoints is not None and not row.checkpoints.committed


def test_a_completed_or_failed_attempt_gets_no_line(tmp_path: Path) -> None:
    _, prefixes = _prefixes(tmp_path)
    seen = watch(prefixes.__getitem__, "train.fit")
    assert seen is not None
    failed = CommandReport(name="fit", status=Status.FAILED, returncode=1, attempts=1)
    row, line = judge(seen, failed, None, phase="train")
    assert line is None and row.note is None
    assert row.checkpoints is not None and row.checkpoints.stalled_attempts == 0


class _Unreachable:
    url = "s3://gone/run-1/commands/train.fit"

    def latest(self) -> CheckpointRef | None:
        raise OSError("connection refused")

    def first_after(self, ref: CheckpointRef | None) -> CheckpointRef | None:
        raise OSError("connection refused")

    def was_opened(self) -> bool:
        return False


def test_a_store_that_cannot_be_read_leaves_the_row_as_it_was(tmp_path: Path) -> None:
    def unreachable(label: str) -> CheckpointPrefix:
        return _Unreachable()

    assert watch(unreachable, "train.fit") is None
    _, prefixes = _prefixes(tmp_path)
    seen = watch(prefixes.__getitem__, "train.fit")
    assert seen is not None
    row = _stopped(1)
    judged, line = judge(type(seen)(_Unreachable(), None, seen.started_unix), row, None, phase="train")
    assert judged is row and line is None
