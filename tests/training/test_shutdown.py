"""GracefulShutdown: a real signal becomes a stop request; a later second signal chains to the old handler."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from grd_blocks.training import GracefulShutdown


def _wait_for(predicate: object, what: str) -> None:
    import time

    deadline = time.monotonic() + 10
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_first_sigterm_only_requests_a_stop() -> None:
    with GracefulShutdown(repeat_window_s=0.0) as shutdown:
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(lambda: shutdown.requested, "the SIGTERM to be recorded")
        assert shutdown.reason == "preempted"
    assert signal.getsignal(signal.SIGTERM) is not shutdown._handle


def test_sigint_is_a_cancel() -> None:
    with GracefulShutdown() as shutdown:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(lambda: shutdown.requested, "the SIGINT to be recorded")
        assert shutdown.reason == "cancelled"


def test_second_signal_chains_to_the_previously_installed_handler() -> None:
    seen: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with GracefulShutdown(repeat_window_s=0.0) as shutdown:
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for(lambda: shutdown.requested, "the first SIGTERM")
            assert seen == []
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for(lambda: seen == [signal.SIGTERM], "the chained handler to run")
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)


def test_repeat_inside_the_window_counts_as_the_same_request() -> None:
    seen: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with GracefulShutdown(repeat_window_s=3600.0) as shutdown:
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for(lambda: shutdown.requested, "the first SIGTERM")
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            assert seen == []
            assert shutdown.reason == "preempted"
    finally:
        signal.signal(signal.SIGTERM, old)


def test_handlers_are_installed_only_from_the_main_thread() -> None:
    before = signal.getsignal(signal.SIGTERM)
    shutdown = GracefulShutdown()
    worker = threading.Thread(target=shutdown.install)
    worker.start()
    worker.join()
    assert not shutdown.installed
    assert signal.getsignal(signal.SIGTERM) is before
