"""Running `grd` as a real subprocess, the way a user does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def grd_env(api_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a `grd` subprocess: the ephemeral API unless ``api_url`` is given."""
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return {**env, **extra}


def run_grd(cwd: Path, *args: str, api_url: str | None = None, timeout: float = 300,
            **extra_env: str) -> subprocess.CompletedProcess[str]:
    """``python -m grd_blocks.cli ARGS`` in ``cwd``, its output captured."""
    return subprocess.run([sys.executable, "-m", "grd_blocks.cli", *args], cwd=cwd,
                          env=grd_env(api_url, **extra_env), capture_output=True, text=True, timeout=timeout)


def sigtermed_grd_run(
    cwd: Path, run_key: str, ready: Path, api_url: str, **extra_env: str
) -> tuple[int, str]:
    """`grd run spec.yaml --store ./ck --run-key RUN_KEY` in ``cwd``, sent SIGTERM once ``ready`` exists:
    its exit code and stderr (SIGKILLed if it has not exited 120 s later)."""
    from tests.process.helpers import wait_for

    proc = subprocess.Popen(
        [sys.executable, "-m", "grd_blocks.cli", "run", "spec.yaml", "--store", "./ck", "--run-key", run_key],
        cwd=cwd, env=grd_env(api_url, **extra_env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(ready.exists, 120), f"{ready} never appeared"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr
