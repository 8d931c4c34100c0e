"""Graceful SIGTERM/SIGINT for a training loop: the first signal asks to stop, a second one stops at once;
grd's pre-deadline warning signal (``GRD_WARN_SIGNAL``) asks for a deadline stop.

Invariants:

* Handlers are installed only from the main thread (elsewhere ``install()`` is a logged no-op) and the
  handlers that were installed before are put back by ``uninstall()`` / leaving the ``with`` block.
* The first SIGTERM or SIGINT only records itself (``requested``, ``signum``): the loop saves at the next step
  boundary and stops. Nothing is raised from inside the handler, so a step is never torn in half.
* A second signal (SIGTERM or SIGINT) arriving more than ``repeat_window_s`` after the first chains to the
  handler installed before ours (Prefect's SIGTERM bridge, Python's KeyboardInterrupt, or the default action,
  which ends the process with 128+signum). A repeat inside the window counts as the same request: a process
  tree killed as a group and then again by its supervisor gets one request, not an abrupt exit.
* The warning signal named by ``GRD_WARN_SIGNAL`` (grd sets it with ``warn:``) asks for a stop whose reason is
  ``"deadline"``; repeats of it are ignored.
* ``absorb()``, called once a stop has committed its checkpoint and the process is on its way out, ignores
  SIGTERM, SIGINT and the warning signal from then on (even after ``uninstall()``): the exit code says what
  happened (124, 143, 130), not a late supervisor's SIGTERM; SIGKILL after grd's grace still ends it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger("grd.training")

HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
_Handler = Callable[[int, FrameType | None], Any] | int | None


def _warn_signal_from_env() -> int | None:
    """The signal grd warns this command with (``GRD_WARN_SIGNAL``, e.g. ``SIGUSR1``), if any."""
    name = os.environ.get("GRD_WARN_SIGNAL", "").strip().upper()
    if not name:
        return None
    member = getattr(signal.Signals, name if name.startswith("SIG") else f"SIG{name}", None)
    return int(member) if member is not None else None


class GracefulShutdown:
    """Turns SIGTERM/SIGINT into a stop request the training loop honours at its next step boundary."""

    def __init__(
        self,
        *,
        repeat_window_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        warn_signal: int | None = None,
    ) -> None:
        if repeat_window_s is None:
            repeat_window_s = float(os.environ.get("GRD_SIGNAL_REPEAT_WINDOW_S", "1.0"))
        self.repeat_window_s = repeat_window_s
        self.clock = clock
        self.warn_signal = warn_signal if warn_signal is not None else _warn_signal_from_env()
        self.signum: int | None = None
        self.received_at: float | None = None
        self._previous: dict[signal.Signals, _Handler] = {}
        self.installed = False
        self.absorbed = False

    # ------------------------------------------------------------------ state
    @property
    def requested(self) -> bool:
        """True once a stop was asked for (by a signal or ``request``)."""
        return self.signum is not None

    @property
    def reason(self) -> str | None:
        """``"preempted"`` for SIGTERM, ``"cancelled"`` for SIGINT, ``"deadline"`` for grd's warning signal,
        None when nothing was asked."""
        if self.signum is None:
            return None
        if self.signum == self.warn_signal:
            return "deadline"
        return "cancelled" if self.signum == signal.SIGINT else "preempted"

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop as if ``signum`` had arrived (for code that learns of preemption another way)."""
        if self.signum is None:
            self.signum = signum
            self.received_at = self.clock()

    # ------------------------------------------------------------------ handlers
    def install(self) -> GracefulShutdown:
        """Install the handlers (main thread only); returns self."""
        if threading.current_thread() is not threading.main_thread():
            logger.info(
                "not in the main thread: SIGTERM/SIGINT handlers not installed (the main thread owns them)"
            )
            return self
        if self.installed:
            return self
        for sig in self._signals():
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        self.installed = True
        return self

    def _signals(self) -> tuple[signal.Signals, ...]:
        if self.warn_signal is None or self.warn_signal in HANDLED_SIGNALS:
            return HANDLED_SIGNALS
        return (*HANDLED_SIGNALS, signal.Signals(self.warn_signal))

    def uninstall(self) -> None:
        """Put back the handlers that were installed before ours (after ``absorb()``: keep ignoring)."""
        if not self.installed:
            return
        for sig, previous in self._previous.items():
            if self.absorbed:
                previous = signal.SIG_IGN
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False

    def absorb(self) -> None:
        """The stop is committed and the process is leaving: ignore stop signals from now on (main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self.absorbed = True
        for sig in self._signals():
            signal.signal(sig, signal.SIG_IGN)

    def __enter__(self) -> GracefulShutdown:
        return self.install()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = self.clock()
        if signum == self.warn_signal and signum not in HANDLED_SIGNALS:
            if self.signum is None:
                self.signum, self.received_at = signum, now
                os.write(2, b"grd: deadline warning received; saving at the next step boundary\n")
            return
        if self.signum is None:
            self.signum, self.received_at = signum, now
            # a handler runs between bytecodes of the main thread: keep it to one write, no logging locks
            os.write(
                2, f"grd: got {signal.Signals(signum).name}; saving at the next step boundary\n".encode()
            )
            return
        if self.received_at is not None and now - self.received_at <= self.repeat_window_s:
            return  # the same request delivered twice (group kill + supervisor forwarding)
        os.write(2, f"grd: second {signal.Signals(signum).name}; stopping now\n".encode())
        self.chain(signum, frame)

    def chain(self, signum: int, frame: FrameType | None = None) -> None:
        """Run the handler installed before ours for ``signum`` (default action: die by the signal)."""
        previous = self._previous.get(signal.Signals(signum), signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        self.uninstall()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
