"""A save made while the interpreter exits (an ``atexit`` handler: where a run's last progress snapshot is
written) commits: the hasher pool refuses new work then, and the digests run in the saving thread instead.
Checked by a separate reader in this process, after the saving process has exited."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

from grd_blocks.checkpoint import CheckpointEngine

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("payload", ["json", "torch"])
def test_a_save_from_an_atexit_handler_is_committed_and_verifies(
    tmp_path: pathlib.Path, payload: str
) -> None:
    state = ('{"rows": list(range(1000))}' if payload == "json"
             else '{"w": __import__("torch").arange(5_000_000, dtype=__import__("torch").float32)}')
    script = textwrap.dedent(f"""
        import atexit, sys
        sys.path.insert(0, {str(ROOT)!r})
        from grd_blocks.checkpoint import CheckpointEngine
        engine = CheckpointEngine({str(tmp_path / "store")!r})
        state = {state}
        atexit.register(lambda: engine.run("k").save(state, step=7))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    run = CheckpointEngine(str(tmp_path / "store")).run("k")
    latest = run.latest()
    assert latest is not None and latest.index == 7
    loaded = run.load()
    assert loaded is not None
    if payload == "json":
        assert loaded["rows"] == list(range(1000))
    else:
        assert int(loaded["w"].numel()) == 5_000_000 and float(loaded["w"][-1]) == 4_999_999.0
