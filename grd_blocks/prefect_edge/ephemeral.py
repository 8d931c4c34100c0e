"""The ephemeral Prefect API that `grd run` starts when ``PREFECT_API_URL`` is unset, guarded so that it never
outlives grd.

Invariant: the server is started here, before the flow, and Prefect's client reuses that same process (its
server object is a per-port singleton); grd's guardian stops it (SIGTERM, then SIGKILL after
``GUARD_GRACE_S``) if grd dies without stopping it, however it dies. A normal exit stops it as Prefect does.
"""

from __future__ import annotations

from grd_blocks.process import guard_process

__all__ = ["GUARD_GRACE_S", "start_guarded_ephemeral_api"]

GUARD_GRACE_S = 5.0


def start_guarded_ephemeral_api(timeout_s: int | None = None) -> str | None:
    """Start (or reuse) the ephemeral API and have the guardian stop it with grd; its URL, or None when
    ``PREFECT_API_URL`` names a server (or ephemeral mode is off) and nothing was started."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    server = SubprocessASGIServer()
    server.start(timeout=timeout_s)
    if server.server_process is not None:
        guard_process(server.server_process.pid, grace_s=GUARD_GRACE_S)
    return str(server.api_url)
