"""The ephemeral Prefect API that `grd run` starts when ``PREFECT_API_URL`` is unset, guarded so that it never
outlives grd.

Invariants:

* The guardian is up before the server is spawned, and the server is handed to it the moment its process
  exists (Prefect's spawn, its respawn on a taken port included), not once it answers: a grd killed during
  the seconds the server takes to start still has it stopped (SIGTERM, then SIGKILL after ``GUARD_GRACE_S``).
* Once started, the server's URL is this process's ``PREFECT_API_URL`` (every thread's settings, not the
  environment its commands inherit): a log record emitted after the server stopped (a kill ladder still
  running after a second Ctrl-C) can no longer make Prefect start another server that nothing would stop.
* A normal exit stops the server as Prefect does (at exit, after its logs are sent).
* With ``PREFECT_API_URL`` set nothing of Prefect's server is imported (its code is ~1.4 s of imports).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from typing import Any

from grd_blocks.process import guard_process, prepare_guardian

__all__ = ["GUARD_GRACE_S", "guarded_ephemeral_api"]

GUARD_GRACE_S = 5.0


def _guard_at_spawn(server: Any) -> None:
    """Wrap the server object's spawn so that each process it starts is guarded at once (Prefect's only
    spawn point; 3.8.8 calls it on start and again when the port it picked turns out taken)."""
    if getattr(server, "_grd_guarded", False):
        return
    spawn = server._run_uvicorn_command

    def spawn_guarded() -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = spawn()
        guard_process(proc.pid, grace_s=GUARD_GRACE_S)
        return proc

    server._run_uvicorn_command = spawn_guarded
    server._grd_guarded = True


def _pin_api_url(url: str) -> None:
    """Make ``url`` the API of every thread of this process (Prefect's global settings, which threads without
    settings of their own read), without putting it in the environment commands inherit."""
    from prefect.context import refresh_global_settings_context

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        refresh_global_settings_context()
    finally:
        if before is None:
            del os.environ["PREFECT_API_URL"]
        else:
            os.environ["PREFECT_API_URL"] = before


@contextlib.contextmanager
def guarded_ephemeral_api(timeout_s: int | None = None) -> Iterator[str | None]:
    """Start (or reuse) the ephemeral API, guarded, and use it as this process's API inside the block; yields
    its URL, or None when ``PREFECT_API_URL`` names a server (or ephemeral mode is off): nothing started."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer  # the server's code: ~1.4 s of imports

    prepare_guardian()
    server = SubprocessASGIServer()
    _guard_at_spawn(server)
    server.start(timeout=timeout_s)
    url = str(server.api_url)
    _pin_api_url(url)
    with temporary_settings({PREFECT_API_URL: url}):
        yield url
