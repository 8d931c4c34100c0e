"""`grd run` stopped by Ctrl-C or SIGTERM mid-command exits 130 / 143, its report's ``exit_code`` says the
same, and it prints one line (no traceback) naming the report and how to resume.

The child gets SIGINT's default disposition: a shell without job control starts background jobs with SIGINT
ignored, and a program started that way keeps ignoring Ctrl-C, grd included (the shell's intent).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import grd_env

SPEC = """name: sig
phases:
  - name: p
    commands:
      - {name: a, run: echo done-a}
      - {name: b, run: "echo started-b; sleep 120"}
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"]
)
def test_a_signal_mid_command_exits_128_plus_it_and_the_report_says_the_same(
    tmp_path: Path, api_url: str, sig: signal.Signals, code: int
) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    key = f"sig-{sig.name.lower()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "grd_blocks.cli", "run", "spec.yaml", "--store", "./ck", "--run-key", key],
        cwd=tmp_path, env=grd_env(api_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        for line in proc.stderr:  # the command's output is logged here as it is printed
            seen.append(line)
            if "p.b | started-b" in line:
                break
        else:
            pytest.fail("grd run ended before command b started:\n" + "".join(seen))
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(seen) + rest
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    ours = [line for line in stderr.splitlines() if line.startswith("grd run:")]
    assert len(ours) == 1 and f"exit code {code}" in ours[0] and f"--resume {key}" in ours[0], stderr
    report = json.loads((tmp_path / "reports" / key / "report.json").read_text())
    assert report["exit_code"] == code and report["status"] == "CANCELLED"
    rows = {row["name"]: row["status"] for row in report["phases"][0]["commands"]}
    assert rows == {"a": "COMPLETED", "b": "CANCELLED"}
