"""`grd run` end to end in a subprocess: report file, summary, exit codes 0/1/124/2, resume."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.cli.helpers import run_grd

ROOT = Path(__file__).resolve().parents[2]


def _grd(tmp_path: Path, spec: str, *args: str,
         api_url: str | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(spec))
    return run_grd(tmp_path, "run", str(path), "--store", str(tmp_path / "ckpt"), *args, api_url=api_url)


def test_all_completed_exits_0_and_writes_the_report(tmp_path: Path, api_url: str) -> None:
    proc = _grd(tmp_path, """
        name: cli-ok
        phases:
          - name: p
            commands:
              - {name: hello, run: echo hello}
        """, "--report", "out/report.json", "--run-key", "cli-ok-1", api_url=api_url)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "COMPLETED" and report["run_key"] == "cli-ok-1" and report["exit_code"] == 0
    assert "hello" in proc.stdout and "exit code 0" in proc.stdout
    assert (tmp_path / "out" / "cli-ok-1" / "p.hello.attempt-1.log").read_text().strip() == "hello"


def test_a_failure_exits_1_and_a_timeout_alone_exits_124(tmp_path: Path, api_url: str) -> None:
    failed = _grd(tmp_path, """
        name: cli-fail
        phases:
          - name: p
            commands:
              - {name: bad, run: exit 5}
              - {name: slow, run: sleep 30, timeout: 0.5s, grace: 0.5s}
        """, "--report", "f.json", api_url=api_url)
    assert failed.returncode == 1, failed.stderr
    timed_out = _grd(tmp_path, """
        name: cli-timeout
        phases:
          - name: p
            commands:
              - {name: slow, run: sleep 30, timeout: 0.5s, grace: 0.5s}
        """, "--report", "t.json", api_url=api_url)
    assert timed_out.returncode == 124, timed_out.stderr
    assert json.loads((tmp_path / "t.json").read_text())["phases"][0]["commands"][0]["status"] == "TIMEOUT"
    assert "TIMEOUT" in timed_out.stdout


def test_a_bad_spec_exits_2_naming_file_line_and_key_without_a_traceback(tmp_path: Path) -> None:
    proc = _grd(tmp_path, """
        name: broken
        phases:
          - name: p
            commands:
              - name: x
                run: echo hi
                timeuot: 5s
        """)
    assert proc.returncode == 2
    assert "spec.yaml:8" in proc.stderr and "timeuot" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_invalid_run_key_is_a_usage_error(tmp_path: Path) -> None:
    proc = _grd(tmp_path, "name: k\nphases: [{name: p, commands: [{name: a, run: 'true'}]}]\n",
                "--run-key", "no/slashes")
    assert proc.returncode == 2 and "--run-key 'no/slashes': is not a valid run key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_subcommand_prints_usage_and_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "grd_blocks.cli"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and "run" in proc.stderr
