"""Running `grd` as a real subprocess, the way a user does."""

from __future__ import annotations

import os
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
