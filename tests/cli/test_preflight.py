"""`grd run` mistakes are found before the first command: exit 2 and one line naming the flag, what is wrong
and the fix, no traceback, and nothing run (the spec's first command would leave a marker file). And lost
progress is never a success: a store that fails mid-run is an ERROR line, ``progress.committed: false`` in
the report and exit code 1."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.cli.helpers import run_grd

SPEC = """name: pre
phases:
  - name: p
    commands:
      - {name: first, run: "echo ran > MARKER"}
"""


def _spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    (tmp_path / "a-file").write_text("not a directory\n")
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once the socket is closed


def _refused(tmp_path: Path, *args: str, flag: str, words: str, **env: str) -> None:
    proc = run_grd(tmp_path, "run", str(tmp_path / "spec.yaml"), *args, **env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"grd run: {flag} ") and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "MARKER").exists(), "a command ran before the mistake was reported"


@pytest.mark.parametrize(
    ("args", "flag", "words"),
    [
        (["--store", "./a-file"], "--store", "is a regular file, not a directory"),
        (["--store", "zz://::garbage"], "--store", "cannot be opened (Protocol not known"),
        (["--store", "s3://"], "--store", "names no bucket"),
        (["--store", "s3:///ck"], "--store", "has an empty bucket name"),
        (["--store", "gs://"], "--store", "names no bucket"),
        (["--store", "file://"], "--store", "names no path"),
        (["--store", "s3:/bkt/p"], "--store", "is missing a slash after 's3:'"),
        (["--store", "memory://x"], "--store", "is a memory store: it lives only in this process"),
        (["--store", "/dev/null"], "--store", "/dev/null is a character device, not a directory"),
        (["--report", "a-file/report.json"], "--report", "cannot be created"),
        (["--report", "."], "--report", "is a directory; name a file in it"),
        (["--report", "/proc/version"], "--report", "cannot write in '/proc'"),
        (["--report", "r" * 10_000 + ".json"], "--report", "has a name of 10005 bytes; the most"),
        (["--report", "/".join(["d" * 200] * 25)], "--report", "is longer than the 4096 bytes"),
        (["--run-key", "a/b"], "--run-key", "is not a valid run key"),
        (["--run-key", "a", "--resume", "b"], "--resume", "differs from --run-key 'a'"),
    ],
    ids=["store-is-a-file", "store-garbage-url", "store-s3-no-bucket", "store-s3-empty-bucket",
         "store-gs-no-bucket", "store-file-no-path", "store-s3-one-slash", "store-memory", "store-dev-null",
         "report-under-a-file", "report-is-a-directory", "report-in-proc", "report-name-too-long",
         "report-path-too-long", "bad-run-key", "keys-differ"],
)
def test_a_mistaken_flag_is_one_line_and_exit_2_before_anything_runs(
    tmp_path: Path, args: list[str], flag: str, words: str
) -> None:
    _spec(tmp_path)
    store = [] if "--store" in args else ["--store", str(tmp_path / "ckpt")]
    _refused(tmp_path, *store, *args, flag=flag, words=words)
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "gs:").exists(), "a URL became a local folder"


def test_an_s3_store_with_no_server_is_refused_before_anything_runs(tmp_path: Path) -> None:
    _spec(tmp_path)
    _refused(tmp_path, "--store", "s3://bucket/ckpts", flag="--store", words="cannot write a probe object",
             AWS_ENDPOINT_URL=f"http://127.0.0.1:{_closed_port()}", AWS_ACCESS_KEY_ID="k",
             AWS_SECRET_ACCESS_KEY="s")


def test_a_block_name_that_does_not_exist_is_one_line_without_a_prefect_traceback(
    tmp_path: Path, api_url: str
) -> None:
    _spec(tmp_path)
    proc = run_grd(tmp_path, "run", "spec.yaml", "--store", "no-such-block", api_url=api_url)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "grd run: --store 'no-such-block': no CheckpointStore block named 'no-such-block' (Unable to find "
        "block document named no-such-block for block type grd-checkpoint-store); create it with `grd store "
        "create no-such-block URL`, or pass a URL/path such as ./no-such-block"
    ]
    assert not (tmp_path / "MARKER").exists()


def test_check_validates_everything_and_runs_nothing(tmp_path: Path) -> None:
    _spec(tmp_path)
    proc = run_grd(tmp_path, "run", "spec.yaml", "--store", "./ckpt", "--report", "out/r.json", "--check")
    assert proc.returncode == 0 and "nothing was run" in proc.stdout, proc.stderr
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "out" / "r.json").exists()
    assert list((tmp_path / "ckpt").iterdir()) == [], "the store probe is removed"


def test_progress_lost_mid_run_is_an_error_line_in_the_report_and_exit_1(
    tmp_path: Path, api_url: str
) -> None:
    _spec(tmp_path, """name: lose
phases:
  - name: p
    commands:
      - {name: breaks-store, run: "rm -rf st && echo x > st"}
      - {name: after, run: echo after}
""")
    proc = run_grd(tmp_path, "run", "spec.yaml", "--store", "./st", "--run-key", "lose-1", "--report",
                   "r.json", api_url=api_url)
    assert proc.returncode == 1, proc.stderr
    assert "ERROR" in proc.stderr and "progress commit failed" in proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["exit_code"] == 1 and report["status"] == "FAILED"
    assert report["progress"]["committed"] is False and "Not a directory" in report["progress"]["error"]
    assert [c["status"] for c in report["phases"][0]["commands"]] == ["COMPLETED", "COMPLETED"]
    assert "progress NOT committed" in proc.stdout


def test_a_run_whose_progress_is_committed_says_so_and_resume_skips_it(
    tmp_path: Path, api_url: str
) -> None:
    _spec(tmp_path)
    first = run_grd(tmp_path, "run", "spec.yaml", "--store", "./ck", "--run-key", "ok-1", "--report",
                    "a.json", api_url=api_url)
    assert first.returncode == 0, first.stderr
    progress = json.loads((tmp_path / "a.json").read_text())["progress"]
    assert progress == {"committed": True, "error": None, "note": None}
    again = run_grd(tmp_path, "run", "spec.yaml", "--store", "./ck", "--resume", "ok-1", "--report", "b.json",
                    api_url=api_url)
    assert again.returncode == 0, again.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["phases"][0]["commands"][0]["resumed"] is True and report["progress"]["note"] is None


def test_a_resume_of_a_key_with_no_progress_runs_everything_and_says_so(tmp_path: Path, api_url: str) -> None:
    _spec(tmp_path)
    proc = run_grd(tmp_path, "run", "spec.yaml", "--store", "./ck", "--resume", "never-ran", "--report",
                   "r.json", api_url=api_url)
    assert proc.returncode == 0, proc.stderr
    note = "resume of run key 'never-ran' asked, but no progress was ever committed under it"
    assert "WARNING" in proc.stderr and note in proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["progress"]["note"].startswith(note) and (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("kind", ["device", "fifo", "too-large"])
def test_a_spec_that_is_a_device_a_fifo_or_huge_is_one_line_and_exit_2_at_once(
    tmp_path: Path, kind: str
) -> None:
    """/dev/zero was read without a cap (about 1 GB/s of memory), a FIFO with no writer hung ``grd run``."""
    if kind == "fifo":
        spec = tmp_path / "spec.fifo"
        os.mkfifo(spec)
    elif kind == "too-large":
        spec = tmp_path / "spec.yaml"
        spec.write_text("# padding\n" * 500_000)  # 5 MB
    proc = run_grd(tmp_path, "run", "/dev/zero" if kind == "device" else str(spec), "--store", "./ck")
    words = {"device": "/dev/zero: the path is a device, not a spec file",
             "fifo": "spec.fifo: the path is a FIFO, not a spec file",
             "too-large": "spec.yaml: the file is larger than 4 MiB"}[kind]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
