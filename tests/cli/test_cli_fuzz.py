"""Property-based fuzzing of the `grd` command line (in process, the real ``main``): whatever the arguments,
`grd run ... --check` and `grd checkpoints ...` return an exit code, never raise, and every error is one
line naming the flag (or the file and line, for a spec) with no traceback.

Paths the fuzzer writes stay inside the test's directory: generated values are relative and without ``..``
(plus a few fixed hostile absolute ones that cannot be written: /proc/version, /dev/null).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.cli import main

_FLAGS = ("--report", "--store", "--run-key", "--resume")
_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
_SAFE_TEXT = st.text(_CHARS, max_size=12).filter(
    lambda text: ".." not in text and not text.startswith(("/", "~", "-"))
)
_VALUES = st.sampled_from([
    "./ck", "ck", "./a-file", "a-file/x.json", "zz://::garbage", "memory://fuzz", "/proc/version",
    "/dev/null", ".", "out/r.json", "no-such-block", "nightly", "run-1", "bad key", "a/b", "x" * 200, "",
    "üñí",
]) | _SAFE_TEXT
_CHECKPOINT_FLAGS = ["--step", "--epoch", "--all", "--yes", "--verify", "1", "9", "-3", "x"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("cli-fuzz")
    (root / "spec.yaml").write_text("name: f\nphases: [{name: p, commands: [{name: c, run: 'true'}]}]\n")
    (root / "bad.yaml").write_text("name: f\nphases: [{name: p, commands: [{name: c, run: 'true', x: 1}]}]\n")
    (root / "a-file").write_text("x")
    engine = CheckpointEngine(str(root / "ck"))
    for step in range(3):
        engine.save_checkpoint("run-1", state={"s": step}, step=step)
    os.symlink("/dev/zero", root / "ck" / "run-1" / "step_9")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)


def _one_clear_line(code: int, err: str, *, names: str) -> None:
    assert isinstance(code, int) and code in (0, 1, 2), (code, err)
    event(f"exit {code}")
    assert "Traceback" not in err
    if code != 0 or err:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert re.match(names, lines[0]), lines[0]


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=st.sampled_from(["spec.yaml", "bad.yaml", "missing.yaml", "a-file", "."]),
       flags=st.lists(st.tuples(st.sampled_from(_FLAGS), _VALUES), max_size=4),
       extra=st.lists(st.sampled_from(["--no-timeouts", "--bogus", "-x", "--report"]), max_size=1))
def test_grd_run_check_with_any_flags_is_an_exit_code_and_one_clear_line(
    workdir: Path, prefect_api: None, capsys: pytest.CaptureFixture[str], spec: str,
    flags: list[tuple[str, str]], extra: list[str]
) -> None:
    capsys.readouterr()
    argv = ["run", spec, *[part for flag in flags for part in flag], *extra, "--check"]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: a usage error
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    _one_clear_line(code, err, names=r"grd( run)?: (--[a-z-]+ |error: |[^ ]+\.yaml|[^ ]*a-file|\.:|missing)")
    if code == 0:
        assert not Path("MARKER").exists()


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(["ls", "show", "verify", "rm"]),
       target=_VALUES, run_key=st.none() | _VALUES,
       flags=st.lists(st.sampled_from(_CHECKPOINT_FLAGS), max_size=3))
def test_grd_checkpoints_with_any_arguments_is_an_exit_code_and_one_clear_line(
    workdir: Path, prefect_api: None, capsys: pytest.CaptureFixture[str], command: str, target: str,
    run_key: str | None, flags: list[str]
) -> None:
    capsys.readouterr()
    argv = ["checkpoints", command, target, *([run_key] if run_key is not None else []), *flags]
    if command == "rm":
        argv = [a for a in argv if a != "--yes"]  # keep the store for later examples: rm stops at --yes
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    _one_clear_line(code, err, names=r"grd( checkpoints( [a-z]+)?)?: error: ")
    assert (workdir / "ck" / "run-1" / "step_2" / "MANIFEST.json").is_file()
