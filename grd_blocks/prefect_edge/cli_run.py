"""What ``grd run`` needs from Prefect: the ephemeral API's settings, SIGTERM as Prefect's
``TerminationSignal``, and the benchmark flow.

Invariant: the defaults (``_PREFECT_DEFAULTS``) never override the user's environment; they are set in the
environment (for child processes, before Prefect is first imported where possible) and as temporary
settings (in case Prefect read its settings already).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn

from grd_blocks.prefect_edge.api_outage import GRD_CLIENT_MAX_RETRIES

__all__ = ["benchmark_flow", "prefect_settings", "set_default_environment", "sigterm_raises"]

_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLIENT_MAX_RETRIES": str(GRD_CLIENT_MAX_RETRIES),  # ride out a restart (api_outage.py)
}


def set_default_environment() -> None:
    """Put the defaults in the environment where the user set nothing (call before Prefect is imported)."""
    for name, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def prefect_settings() -> contextlib.AbstractContextManager[object]:
    """Defaults for the ephemeral API (a user's environment wins), in the environment for child processes and
    as temporary settings, in case Prefect read its settings before (an earlier import of prefect)."""
    from prefect.settings import (
        PREFECT_CLIENT_MAX_RETRIES,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    set_default_environment()
    startup = os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]
    analytics = os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"].strip().lower() in ("1", "true", "yes", "on")
    updates: dict[Any, Any] = {PREFECT_SERVER_ANALYTICS_ENABLED: analytics}
    if startup.strip().isdigit():
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = int(startup)
    retries = os.environ["PREFECT_CLIENT_MAX_RETRIES"]
    if retries.strip().isdigit():
        updates[PREFECT_CLIENT_MAX_RETRIES] = int(retries)
    return temporary_settings(updates=updates)


def benchmark_flow() -> Callable[..., Any]:
    """The benchmark flow (imported on first use: it imports Prefect's engine)."""
    from grd_blocks.prefect_edge.benchmark_flow import benchmark

    flow: Callable[..., Any] = benchmark
    return flow


def _terminate(signum: int, frame: FrameType | None) -> NoReturn:
    """SIGTERM outside a flow run (Prefect's own handler is in place inside one, and hands the signal back
    here when it is done): end the same way, as Prefect's ``TerminationSignal``."""
    from prefect.exceptions import TerminationSignal

    raise TerminationSignal(signal=signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is _terminate:  # not replaced meanwhile (by the final outcome's)
            signal.signal(signal.SIGTERM, previous)
