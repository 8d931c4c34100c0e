"""When the Prefect API stops answering: which errors say so, how long Prefect's client keeps asking before it
gives up (the limit grd documents), and the one line that names the server and that limit.

Invariants:

* ``unreachable(exc)`` is true exactly when ``exc`` or an exception it was raised from (its ``__cause__`` /
  ``__context__`` chain) is a transport failure of the API (refused or reset connection, timeout, broken
  protocol) or one of the answers Prefect's client retries itself (408, 429, 502, 503, 504). Everything else
  (a 4xx that names a mistake, a defect) is not an outage and is never swallowed as one.
* ``retry_window_s()`` is what Prefect's client waits on one call before it raises: its exponential backoff
  2, 4, 8 ... s over ``PREFECT_CLIENT_MAX_RETRIES`` retries, before its jitter (``PREFECT_CLIENT_RETRY_JITTER_
  FACTOR``, ±20% by default). ``grd run`` and grd's deployments raise the retries from Prefect's 5 (62 s) to
  ``GRD_CLIENT_MAX_RETRIES`` (126 s, about two minutes) unless the user set them: long enough for a server to
  restart and migrate its database. An outage that outlasts the window fails the run (docs/design.md,
  "A flaky API").
* ``with_retries`` gives grd's own API calls (its results table, its checkpoint index) the same backoff with
  jitter for the one failure Prefect's client does not retry: a refused connection on a client that never
  connected (each ``get_client()`` is a new client).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

__all__ = [
    "GRD_CLIENT_MAX_RETRIES", "api_label", "outage_line", "retry_window_s", "unreachable", "with_retries",
]

GRD_CLIENT_MAX_RETRIES = 6
"""``PREFECT_CLIENT_MAX_RETRIES`` where the user set none: 2+4+...+64 = 126 s of retries on one call."""

_RETRIED_STATUSES = frozenset({408, 429, 502, 503, 504})
T = TypeVar("T")
_JITTER = random.Random()  # its own generator: a user's seeded global ``random`` never moves because of grd


def unreachable(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised from) says the API did not answer (module invariant)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, httpx.TransportError):
            return True
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in _RETRIED_STATUSES:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _max_retries() -> int:
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    return int(PREFECT_CLIENT_MAX_RETRIES.value())


def retry_window_s(retries: int | None = None) -> int:
    """Seconds Prefect's client backs off on one call before it raises (2 + 4 + ... + 2**retries)."""
    count = _max_retries() if retries is None else retries
    return max(0, (1 << (count + 1)) - 2) if count >= 0 else 0


def api_label() -> str:
    """The API's URL as the user knows it (``PREFECT_API_URL``), or what stands in for it."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    return str(url) if url else "(the ephemeral API, PREFECT_API_URL unset)"


def outage_line(exc: BaseException) -> str:
    """The API's outage as one line: the server, what failed, and the limit (and how to raise it)."""
    retries = _max_retries()
    cause = _root(exc)
    return (f"the Prefect API at {api_label()} did not answer for about {retry_window_s(retries)} s "
            f"({type(cause).__name__}: {str(cause) or 'no detail'}); Prefect's client gave up after "
            f"{retries} retries with backoff (PREFECT_CLIENT_MAX_RETRIES={retries}; raise it to ride out "
            "longer outages)")


def _root(exc: BaseException) -> BaseException:
    """The first exception in ``exc``'s chain that ``unreachable`` recognises (``exc`` if none)."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, httpx.TransportError | httpx.HTTPStatusError):
            return current
        current = current.__cause__ or current.__context__
    return exc


def with_retries(call: Callable[[], T], *, window_s: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, asked again with exponential backoff (1, 2, 4 ... s, ±20% jitter) while it fails because
    the API does not answer, for at most ``window_s`` (default ``retry_window_s()``); then its error."""
    window = retry_window_s() if window_s is None else window_s
    waited, pause = 0.0, 1.0
    while True:
        try:
            return call()
        except Exception as exc:
            if not unreachable(exc) or waited >= window:
                raise
            delay = min(pause * _JITTER.uniform(0.8, 1.2), max(0.0, window - waited))
            sleep(delay)
            waited += delay
            pause *= 2
