"""Run examples/train_mlp.py as a real process (alone or under torchrun) and observe its steps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_mlp.py"


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "GRD_SIGNAL_REPEAT_WINDOW_S": "0"})
    out.pop("GRD_TIME_LEFT_S", None)
    out.update(extra)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(args: Sequence[str], *, nproc: int = 1, script: Path = SCRIPT) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(script), *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--nnodes",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "--monitor-interval",
        "0.2",
        str(script),
        *args,
    ]


def start(
    args: Sequence[str], *, nproc: int = 1, script: Path = SCRIPT, **extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(args, nproc=nproc, script=script),
        env=env(**extra),
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run(
    args: Sequence[str], *, nproc: int = 1, timeout: float = 300, script: Path = SCRIPT, **extra: str
) -> tuple[int, str]:
    done = subprocess.run(
        command(args, nproc=nproc, script=script),
        env=env(**extra),
        cwd=ROOT,
        text=True,
        timeout=timeout,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    return done.returncode, done.stdout


def steps(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line) for line in log.read_text().split()]


def wait_for_steps(proc: subprocess.Popen[str], log: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(steps(log)) < count:
        if proc.poll() is not None:
            raise AssertionError(
                f"script exited {proc.returncode} before {count} steps: {proc.stdout.read()}"
            )  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"no {count} steps within {timeout}s")
        time.sleep(0.02)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise
    return proc.returncode, out


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill the process group we started (cleanup after a failed assertion)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def params(report: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(report.read_text())["params"]
    return data
