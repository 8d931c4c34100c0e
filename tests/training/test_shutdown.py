"""GracefulShutdown: a real signal becomes a stop request; a later second signal chains to the old handler."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import pytest

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


def test_grds_warning_signal_asks_for_a_deadline_stop_and_repeats_are_one_request() -> None:
    with GracefulShutdown(warn_signal=signal.SIGUSR1) as shutdown:
        os.kill(os.getpid(), signal.SIGUSR1)
        _wait_for(lambda: shutdown.requested, "the warning to be recorded")
        assert shutdown.reason == "deadline"
        os.kill(os.getpid(), signal.SIGUSR1)  # a second warning changes nothing and stops nothing
        os.kill(os.getpid(), signal.SIGTERM)  # nor does a SIGTERM inside the repeat window
        assert shutdown.reason == "deadline"


def test_the_warning_signal_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRD_WARN_SIGNAL", "SIGUSR2")
    assert GracefulShutdown().warn_signal == signal.SIGUSR2
    monkeypatch.setenv("GRD_WARN_SIGNAL", "usr1")
    assert GracefulShutdown().warn_signal == signal.SIGUSR1
    monkeypatch.delenv("GRD_WARN_SIGNAL")
    assert GracefulShutdown().warn_signal is None


def test_after_absorb_stop_signals_are_ignored_even_once_uninstalled() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        with GracefulShutdown(repeat_window_s=0.0) as shutdown:
            shutdown.absorb()
            os.kill(os.getpid(), signal.SIGTERM)  # ignored: this process would die if it were not
            assert not shutdown.requested
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, signal.default_int_handler)
