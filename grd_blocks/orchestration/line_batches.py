"""Output lines of a command sent to a logger (the run's log) in batches, never slowing the command down.

Invariant: the command's output reader only appends to a bounded backlog and is never held up by the
logger; lines leave in order, one record per up to ``max_lines`` lines or ``flush_s`` seconds after the
first line of a batch arrived, however long the command was quiet before it; what is
dropped from the log (over ``max_per_s`` lines a second, or a full backlog) is counted in place, so the lines
shown plus the lines counted equal the lines printed. The command's log file keeps every byte regardless.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["LineBatcher", "line_logger"]


class LineBatcher:
    """Sends the output lines of command ``label`` to ``logger`` in batches, never blocking the caller.

    Invariant: the caller (the command's output reader) only appends to a bounded backlog: it is never held up
    by the logger, so a command that prints faster than the run log can take is not slowed down. A sender
    thread sends one record per up to ``max_lines`` lines (each prefixed ``label |`` or ``label stderr |``),
    when a batch is full or ``flush_s`` seconds after its first line arrived; lines arrive in order. While
    the backlog holds ``max_backlog`` lines, further lines are dropped from the run log only (the command's
    log file keeps every byte) and one line in their place says how many; so are lines beyond ``max_per_s``
    a second, which the reader then does not even split (``want_lines``: the Prefect log is for reading, the
    log file for keeping). ``close()`` sends the rest.
    """

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any], label: str, *,
                 max_lines: int = 200, flush_s: float = 0.2, max_backlog: int = 10_000,
                 max_per_s: int = 2_000, log_path: str | None = None) -> None:
        self.logger = logger
        self.label = label
        self.max_lines = max_lines
        self.flush_s = flush_s
        self.max_backlog = max_backlog
        self.max_per_s = max_per_s
        self.log_path = log_path
        self._window = 0  # the second (monotonic) lines are being counted in, and how many so far
        self._in_window = 0
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()  # held while a batch is sent: batches leave in order
        self._lines: list[str] = []
        self._first_at: float | None = None
        self._dropped = 0
        self._dropped_chars = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def want_lines(self) -> bool:
        """Whether the next lines would be shown (``LineBudget``): under ``max_per_s`` this second and room
        in the backlog."""
        with self._cond:
            self._roll()
            return self._closed or (self._in_window < self.max_per_s and len(self._lines) < self.max_backlog)

    def _roll(self) -> None:
        """Start counting a new second when one has passed (called with the lock held)."""
        second = int(time.monotonic())
        if second != self._window:
            self._window, self._in_window = second, 0

    def skipped(self, stream: str, lines: int, chars: int) -> None:
        """Lines the reader did not split (``LineBudget``): counted for the drop notice."""
        with self._cond:
            self._dropped += lines
            self._dropped_chars += chars

    def __call__(self, stream: str, line: str) -> None:
        kind = "" if stream == "stdout" else "stderr "
        with self._cond:
            self._roll()
            self._in_window += 1
            if self._closed:
                self._lines.append(f"{self.label} {kind}| {line.rstrip(chr(10))}")
                batch = self._take()
            else:
                if len(self._lines) >= self.max_backlog or self._in_window > self.max_per_s:
                    self._dropped += 1
                    self._dropped_chars += len(line)
                    return
                self._note_dropped()
                self._lines.append(f"{self.label} {kind}| {line.rstrip(chr(10))}")
                starts_batch = self._first_at is None
                if starts_batch:
                    self._first_at = time.monotonic()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="grd-log-lines", daemon=True)
                    self._thread.start()
                if starts_batch or len(self._lines) >= self.max_lines:
                    self._cond.notify_all()  # the sender (idle, or waiting for a batch) starts its timer
                return
        self._send(batch)

    def _note_dropped(self) -> None:
        """Put the drop notice where the dropped lines were (called with the lock held)."""
        if self._dropped:
            where = f" {self.log_path}" if self.log_path else " the command's log file"
            self._lines.append(
                f"{self.label} | [grd: {self._dropped} line(s), {self._dropped_chars} characters, not shown "
                f"here: the command printed faster than the run log takes them; every byte is in{where}]"
            )
            self._dropped = self._dropped_chars = 0

    def _take(self) -> list[str]:
        batch, self._lines = self._lines, []
        self._first_at = None
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if len(self._lines) >= self.max_lines:
                        break
                    if self._first_at is not None:
                        left = self._first_at + self.flush_s - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    else:
                        self._cond.wait()
                if self._closed:
                    return
                batch = self._lines[: self.max_lines]
                del self._lines[: self.max_lines]
                self._first_at = time.monotonic() if self._lines else None
                self._send_lock.acquire()
            try:
                self._emit(batch)
            finally:
                self._send_lock.release()

    def _emit(self, batch: list[str]) -> None:
        if batch:
            try:
                self.logger.info("%s", "\n".join(batch))
            except Exception:  # a broken log handler must not stop the lines that follow
                logging.getLogger("grd").exception("cannot send output lines of %s to the run log",
                                                   self.label)

    def _send(self, batch: list[str]) -> None:
        with self._send_lock:
            self._emit(batch)

    def flush(self) -> None:
        """Send the lines waiting now."""
        with self._cond:
            self._note_dropped()
            batch = self._take()
            self._send_lock.acquire()
        try:
            self._emit(batch)
        finally:
            self._send_lock.release()

    def close(self) -> None:
        """Send the rest (and the drop notice, if lines were dropped); a line that still arrives later is sent
        at once."""
        with self._cond:
            self._closed = True
            self._note_dropped()
            self._cond.notify_all()
        self.flush()


def line_logger(logger: logging.Logger | logging.LoggerAdapter[Any], label: str,
                log_path: str | None = None) -> LineBatcher:
    """A sink that sends the output lines of command ``label`` to ``logger``, batched (``LineBatcher``)."""
    return LineBatcher(logger, label, log_path=log_path)
