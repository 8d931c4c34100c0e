"""A command's output: a PTY for stdout (so C stdio and Python line-buffer), a pipe for stderr, read inline by
the supervising thread (``pump``) or by one reader thread (``start``/``hand_over``), never both at once.

Invariant: every byte the command wrote before its tree was killed reaches ``on_line``, the log file and the
tails, decoded as UTF-8 with ``errors="replace"``; ``\\r\\n`` from the PTY becomes ``\\n``; a last line
without a newline is still delivered. ``finish(timeout)`` never blocks longer than ``timeout`` even if some
process still holds the write end: after it the reader drains what is already buffered and stops.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import logging
import math
import os
import select
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["MAX_LINE_CHARS", "OutputCapture"]

log = logging.getLogger("grd.process")

MAX_LINE_CHARS = 65536  # a longer run without a newline is delivered in pieces of this size
_READ = 65536
_DRAIN_READS = 64  # after finish() times out: at most 4 MiB more per stream

OnLine = Callable[[str, str], None]


class _Stream:
    """Line splitting, tail and log writing for one stream (runs on the reader thread only)."""

    def __init__(self, name: str, on_line: OnLine | None, log_file: IO[str] | None, tail_chars: int) -> None:
        self.name = name
        self.on_line = on_line
        self.log_file = log_file
        self.tail_chars = tail_chars
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.partial = ""
        self.tail = ""
        self.callback_failed = False

    def feed(self, data: bytes, *, final: bool = False) -> None:
        text = self.partial + self.decoder.decode(data, final=final)
        lines = text.split("\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_LINE_CHARS:
            cut = len(self.partial) - len(self.partial) % MAX_LINE_CHARS
            lines.append(self.partial[:cut])
            self.partial = self.partial[cut:]
        if final and self.partial:
            lines.append(self.partial)
            self.partial = ""
        out: list[str] = []
        for line in lines:
            if line.endswith("\r"):
                line = line[:-1]
            for start in range(0, max(len(line), 1), MAX_LINE_CHARS):
                piece = line[start : start + MAX_LINE_CHARS]
                out.append(piece)
                self._deliver(piece)
        if out:
            chunk = "\n".join(out) + "\n"
            if self.log_file is not None:
                self.log_file.write(chunk)
            if self.tail_chars > 0:
                self.tail = (self.tail + chunk)[-2 * self.tail_chars :]

    def _deliver(self, line: str) -> None:
        if self.on_line is None:
            return
        try:
            self.on_line(self.name, line)
        except Exception:
            if not self.callback_failed:
                log.exception("on_line callback raised on %s; output is still captured", self.name)
                self.callback_failed = True

    def tail_text(self) -> str:
        text = self.tail.rstrip("\n") if self.tail.endswith("\n") else self.tail
        return text[-self.tail_chars :] if self.tail_chars > 0 else ""


class OutputCapture:
    """Owns the file descriptors between parent and child and the thread that reads them."""

    def __init__(
        self,
        *,
        use_pty: bool = True,
        log_path: str | Path | None = None,
        on_line: OnLine | None = None,
        tail_chars: int = 4000,
    ) -> None:
        self.log_file: IO[str] | None = None
        self.pty = False
        out_r, out_w = -1, -1
        if use_pty:
            try:
                out_r, out_w = os.openpty()
                attrs = termios.tcgetattr(out_w)
                attrs[1] &= ~termios.OPOST  # no output processing: "\n" stays "\n"
                attrs[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG)
                termios.tcsetattr(out_w, termios.TCSANOW, attrs)
                self.pty = True
            except OSError:
                out_r, out_w = -1, -1
        if not self.pty:
            out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.child_stdout = out_w
        self.child_stderr = err_w
        self._fds = {
            out_r: _Stream("stdout", on_line, None, tail_chars),
            err_r: _Stream("stderr", on_line, None, tail_chars),
        }
        self._wake_r, self._wake_w = os.pipe()
        for fd in (out_r, err_r, self._wake_r):
            os.set_blocking(fd, False)
        self._streams = list(self._fds.values())
        self._thread = threading.Thread(target=self._run, name="grd-output", daemon=True)
        try:
            self.bind(log_path=log_path, on_line=on_line, tail_chars=tail_chars)
        except OSError:
            self.abort()
            raise

    def bind(self, *, log_path: str | Path | None, on_line: OnLine | None, tail_chars: int) -> None:
        """Say where the output goes (log file, line callback, tail size); before anything is read. The
        descriptors may have been made earlier (a pre-started command waits on them)."""
        if log_path is not None:
            try:
                self.log_file = open(log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
            except FileNotFoundError:  # its directory does not exist yet (only the first time, usually)
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                self.log_file = open(log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        for stream in self._streams:
            stream.on_line = on_line
            stream.log_file = self.log_file
            stream.tail_chars = tail_chars

    def start(self) -> None:
        """Close the child's ends in this process (so EOF can happen) and start the reader thread."""
        self.release_child_ends()
        self._thread.start()

    def release_child_ends(self) -> None:
        """Close the child's ends in this process (once the child has them), so EOF can happen."""
        self._close_child_ends()

    @property
    def open_fds(self) -> list[int]:
        """The read ends not at EOF yet (for ``pump``)."""
        return list(self._fds)

    def pump(self, fd: int, poller: select.poll) -> None:
        """Read what is ready on ``fd`` in the calling thread (unregistered from ``poller`` at EOF); only
        before ``hand_over``."""
        self._read(fd, poller)

    def hand_over(self) -> None:
        """From now on the reader thread reads (the caller stops pumping): a kill ladder may wait for
        seconds while the command still prints."""
        if self._thread.ident is None:
            self._thread.start()

    def abort(self) -> None:
        """Close everything without reading (the command never started)."""
        self._close_child_ends()
        for fd in [*self._fds, self._wake_r, self._wake_w]:
            _close(fd)
        self._fds.clear()
        if self.log_file is not None:
            self.log_file.close()

    def finish(self, timeout: float) -> None:
        """Wait up to ``timeout`` for EOF on both streams; then take what is buffered and stop."""
        if self._thread.ident is None:
            if self._fds:
                self._drain_inline(timeout)
            _close(self._wake_w)
            _close(self._wake_r)
            if self.log_file is not None:
                self.log_file.close()
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.info(
                "output still open %.1fs after the command ended (a process holds it); draining", timeout
            )
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
            self._thread.join(5.0)
        _close(self._wake_w)
        _close(self._wake_r)
        if self.log_file is not None:
            self.log_file.close()

    def _drain_inline(self, timeout: float) -> None:
        """``finish`` without a reader thread: read to EOF for up to ``timeout``, then what is buffered."""
        self._read_loop(end=time.monotonic() + timeout, wake=None)

    def _drain_buffered(self, poller: select.poll) -> None:
        for fd in list(self._fds):
            for _ in range(_DRAIN_READS):  # bounded: a writer may still be producing
                if fd not in self._fds or not self._read(fd, poller):
                    break

    def _close_streams(self) -> None:
        for fd, stream in list(self._fds.items()):
            stream.feed(b"", final=True)
            _close(fd)
        self._fds.clear()
        if self.log_file is not None:
            self.log_file.flush()

    @property
    def done(self) -> bool:
        """True once reading has stopped (EOF on both streams, or drained after ``finish`` timed out)."""
        if self._thread.ident is None:
            return not self._fds
        return not self._thread.is_alive()

    @property
    def stdout_tail(self) -> str:
        return self._streams[0].tail_text()

    @property
    def stderr_tail(self) -> str:
        return self._streams[1].tail_text()

    # --- reader thread ------------------------------------------------------------------------------

    def _close_child_ends(self) -> None:
        for fd in (self.child_stdout, self.child_stderr):
            _close(fd)
        self.child_stdout = self.child_stderr = -1

    def _run(self) -> None:
        self._read_loop(end=None, wake=self._wake_r)

    def _read_loop(self, *, end: float | None, wake: int | None) -> None:
        """Read every stream to EOF; stop early, taking only what is buffered, once ``end`` (monotonic)
        passes or ``wake`` becomes readable (``finish`` timed out). Always closes the streams."""
        poller = select.poll()
        for fd in (*self._fds, *(() if wake is None else (wake,))):
            poller.register(fd, select.POLLIN)
        try:
            while self._fds:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    log.info("output still open after the command ended (a process holds it); draining")
                    self._drain_buffered(poller)
                    break
                ready = poller.poll(None if left is None else math.ceil(left * 1000))
                if wake is not None and any(fd == wake for fd, _ in ready):
                    self._drain_buffered(poller)
                    break
                for fd, _event in ready:
                    if fd in self._fds:
                        self._read(fd, poller)
        except Exception:
            log.exception("output reader failed; the output after this point is lost")
        finally:
            self._close_streams()

    def _read(self, fd: int, poller: select.poll) -> bool:
        """Read once from ``fd``; True if data came (there may be more), False on EOF or nothing ready."""
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO = PTY master after every slave closed: EOF
                raise
            data = b""
        stream = self._fds[fd]
        if not data:
            stream.feed(b"", final=True)
            poller.unregister(fd)
            _close(fd)
            del self._fds[fd]
            return False
        stream.feed(data)
        if self.log_file is not None:
            self.log_file.flush()
        return True


def _close(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
