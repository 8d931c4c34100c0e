"""`grd run` SIGKILLed (the OOM killer, a lost worker) leaves nothing running: not its commands' trees (they
get SIGTERM and their grace first), not the ephemeral API server it started; and a resume of that run never
runs a command while the killed attempt's copy is still alive. Counted by /proc scans for markers, not by
grd."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.helpers import marked, running, term_recording_tree, wait_for

SLACK_S = 20.0  # added to every bound: a loaded 2-core host schedules late, never early


@pytest.fixture(scope="module")
def api_url(prefect_api: None) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url
    yield str(url)


def _spec(tmp_path: Path, name: str, run: list[str], grace: str = "2s") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        phases:
          - name: p
            commands:
              - name: job
                run: {json.dumps(run)}
                grace: {grace}
        """))
    return path


def _start(tmp_path: Path, spec: Path, *args: str, api_url: str | None,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", **(env or {}))
    env.pop("PREFECT_API_URL", None)
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return subprocess.Popen(
        [sys.executable, "-m", "grd_blocks.cli", "run", str(spec), "--store", str(tmp_path / "ckpt"), *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _tree(marker: Path) -> list[str]:
    """A command with a child and a setsid grandchild that record SIGTERM (``term_recording_tree``)."""
    return term_recording_tree(marker)


def test_grd_run_sigkilled_at_random_moments_leaves_no_command_running(tmp_path: Path, api_url: str) -> None:
    """Ten trials here (each costs a `grd run` start-up); bench/bench_grd_run_kill.py runs fifty."""
    rng = random.Random(1818)
    survivors: dict[int, list[int]] = {}
    for trial in range(10):
        marker = tmp_path / f"tree{trial}"
        spec = _spec(tmp_path, f"kill{trial}", _tree(marker))
        grd = _start(tmp_path, spec, api_url=api_url)
        try:
            assert wait_for(Path(f"{marker}.started").exists, 120), grd.communicate()[0][-3000:]
            time.sleep(rng.uniform(0.0, 0.5))  # the random moment of the kill: the variable under test
        finally:
            grd.kill()
            grd.wait()
        if not wait_for(lambda m=marker: marked(str(m)) == [], 2.0 + SLACK_S):  # type: ignore[misc]
            survivors[trial] = marked(str(marker))
            for pid in survivors[trial]:
                os.kill(pid, signal.SIGKILL)
        assert list(tmp_path.glob(f"tree{trial}.term.*")), "the tree got no SIGTERM before it was stopped"
    assert survivors == {}


def test_a_sigkilled_grd_run_does_not_leave_its_ephemeral_api_server_running(tmp_path: Path) -> None:
    marker = tmp_path / "tree"
    grd = _start(tmp_path, _spec(tmp_path, "ephemeral", _tree(marker)), api_url=None)
    try:
        assert wait_for(Path(f"{marker}.started").exists, 180), grd.communicate()[0][-3000:]
        servers = [pid for pid in marked("prefect.server.api.server:create_app") if _parent(pid) == grd.pid]
        assert len(servers) == 1
    finally:
        grd.kill()
        grd.wait()
    assert wait_for(lambda: not running(servers[0]), 5.0 + SLACK_S)
    assert wait_for(lambda: marked(str(marker)) == [], 2.0 + SLACK_S)


def test_grd_run_sigkilled_at_any_moment_of_its_api_servers_start_up_leaves_nothing_running(
    tmp_path: Path
) -> None:
    """The ephemeral server takes seconds to answer after its process starts; 7 of 15 kills in that window
    used to leak it. Each trial marks grd's environment (every process it starts inherits it), kills grd at a
    random moment after the server process appears, and counts what still carries the mark: nothing may,
    once the guardian's grace has passed. Six trials here, each one `grd run` start-up."""
    from grd_blocks.prefect_edge.ephemeral import GUARD_GRACE_S
    from tests.fixtures.prefect_server import pids_with_env

    rng = random.Random(2727)
    leaked: dict[int, list[str]] = {}
    for trial in range(6):
        mark = f"GRD_TEST_TRIAL={uuid.uuid4().hex}"
        spec = _spec(tmp_path, f"startup{trial}", ["true"])
        grd = _start(tmp_path, spec, api_url=None, env={mark.split("=")[0]: mark.split("=")[1]})
        try:
            def server_spawned(mark: str = mark) -> bool:
                return any("create_app" in _cmdline(pid) for pid in pids_with_env(mark))

            assert wait_for(server_spawned, 60), grd.communicate()[0][-3000:]
            time.sleep(rng.uniform(0.0, 3.0))  # the random moment of the kill: the variable under test
        finally:
            grd.kill()
            grd.wait()
        if not wait_for(lambda m=mark: pids_with_env(m) == [], GUARD_GRACE_S + SLACK_S):  # type: ignore[misc]
            leaked[trial] = [_cmdline(pid)[:80] for pid in pids_with_env(mark)]
            for pid in pids_with_env(mark):
                os.kill(pid, signal.SIGKILL)
    assert leaked == {}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_resume_after_grd_run_was_sigkilled_never_runs_two_copies_at_once(
    tmp_path: Path, api_url: str
) -> None:
    """The killed attempt's copy takes 25 s to save after SIGTERM; the resume starts meanwhile and must stop
    it and wait (each copy holds a lock on a shared file while it runs: an overlap would be recorded)."""
    shared, overlaps, started = tmp_path / "shared.lock", tmp_path / "overlaps", tmp_path / "started"
    code = textwrap.dedent(f"""
        import fcntl, signal, sys, time, pathlib
        f = open({str(shared)!r}, "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pathlib.Path({str(overlaps)!r}).write_text("overlap"); sys.exit(3)
        def save(*_):
            time.sleep(25.0); sys.exit(0)
        signal.signal(signal.SIGTERM, save)
        pathlib.Path({str(started)!r}).touch()
        if len(sys.argv) > 1: time.sleep(3600)
        """)
    key = f"resume-{uuid.uuid4().hex[:8]}"
    first = _start(tmp_path, _spec(tmp_path, "first", [sys.executable, "-c", code, "hold"], "40s"),
                   "--run-key", key, api_url=api_url)
    try:
        assert wait_for(started.exists, 120), first.communicate()[0][-3000:]
    finally:
        first.kill()
        first.wait()
    started.unlink()
    second = _start(tmp_path, _spec(tmp_path, "first", [sys.executable, "-c", code], "40s"),
                    "--resume", key, "--report", "reports/again.json", api_url=api_url)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output[-3000:]
    assert not overlaps.exists()
    row = json.loads((tmp_path / "reports" / "again.json").read_text())["phases"][0]["commands"][0]
    assert row["status"] == "COMPLETED" and "stopped an earlier copy" in row["note"]
    assert row["log_path"].endswith("p.job.attempt-2.log")  # the killed attempt's log is kept beside it


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1
