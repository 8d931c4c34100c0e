"""A command's output: a PTY for stdout (so C stdio and Python line-buffer), a pipe for stderr, read inline by
the supervising thread (``pump``) or by one reader thread (``start``/``hand_over``), never both at once.

Invariant: the log file receives every byte the command wrote, unchanged and in each stream's order (a line is
written whole when it ends, so the two streams interleave line by line; a run of more than ``MAX_LINE_CHARS``
bytes without a newline is written as it comes, nothing inserted; a stream's last bytes without a newline are
written once every stream has ended, so they never join the other stream's next line). The tails and the
``on_line`` callback get text: UTF-8 decoded with ``errors="replace"``, ``\\r\\n`` as ``\\n``, a last line
without a newline still delivered, lines longer than ``MAX_LINE_CHARS`` in pieces (for display only); a
``LineBudget`` callback that declines lines for a while gets them counted instead, never split or decoded.
``finish(timeout)`` never blocks longer than ``timeout`` even if some process still holds the write end: after
it the reader drains what is already buffered and stops.
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
from typing import Protocol, runtime_checkable

__all__ = ["MAX_LINE_CHARS", "LineBudget", "OutputCapture"]

log = logging.getLogger("grd.process")

MAX_LINE_CHARS = 65536  # a longer run without a newline is delivered in pieces of this size
_READ = 65536
_DRAIN_READS = 64  # after finish() times out: at most 4 MiB more per stream

OnLine = Callable[[str, str], None]


@runtime_checkable
class LineBudget(Protocol):
    """An ``on_line`` callback that may decline lines for a while (a run log taking what it can): while
    ``want_lines()`` is False, the reader skips splitting and decoding, counts the lines (a C ``count``) and
    reports them through ``skipped``; the log file and the tails still get every byte."""

    def want_lines(self) -> bool: ...

    def skipped(self, stream: str, lines: int, chars: int) -> None: ...


class _LogFile:
    """The raw log: one descriptor shared by both streams, written with ``os.write`` (no buffer to lose)."""

    def __init__(self, path: str | Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags, 0o644)
        except FileNotFoundError:  # its directory does not exist yet (only the first time, usually)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, flags, 0o644)
        self.lock = threading.Lock()
        self.last_pieces: list[bytes] = []  # the streams' unterminated last bytes, written by ``close``

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        with self.lock:
            while view:
                view = view[os.write(self.fd, view) :]

    def hold_last_piece(self, data: bytes | bytearray) -> None:
        """A stream ended without a newline: its last bytes wait until every stream has ended, or written now
        they would join the other stream's next line."""
        with self.lock:
            self.last_pieces.append(bytes(data))

    def close(self) -> None:
        pieces, self.last_pieces = b"".join(self.last_pieces), []
        with contextlib.suppress(OSError):
            if pieces:
                self.write(pieces)
            os.close(self.fd)


class _Stream:
    """One stream's log writing (whole lines), tail and line callback (one reading thread at a time)."""

    def __init__(self, name: str, on_line: OnLine | None, log_file: _LogFile | None, tail_chars: int) -> None:
        self.name = name
        self.on_line = on_line
        self.log_file = log_file
        self.tail_chars = tail_chars
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = bytearray()  # bytes of the current line, not yet in the log
        self.partial = ""  # text of the current line, not yet delivered
        self.rest_of_skipped = False  # the current line began in a chunk a LineBudget declined
        self.tail = bytearray()
        self.callback_failed = False

    def feed(self, data: bytes, *, final: bool = False) -> None:
        if self.log_file is not None:
            self._log(data, final)
        if self.tail_chars > 0 and data:
            self.tail += data
            cap = 4 * self.tail_chars + 8  # enough bytes for tail_chars characters of UTF-8
            if len(self.tail) > cap:
                del self.tail[:-cap]
        if self.on_line is not None:
            if isinstance(self.on_line, LineBudget) and data and not self.on_line.want_lines():
                self._skip(data)
            else:
                self._lines(data, final)

    def _skip(self, data: bytes) -> None:
        """Count ``data``'s lines for a sink that declines them now (the partial line goes with them)."""
        assert isinstance(self.on_line, LineBudget)
        ended = data.count(b"\n")
        if ended:
            self.partial = ""
            self.decoder.reset()
            self.on_line.skipped(self.name, ended, len(data))
        self.rest_of_skipped = not data.endswith(b"\n")  # the next chunk starts inside a skipped line

    def _log(self, data: bytes, final: bool) -> None:
        assert self.log_file is not None
        cut = data.rfind(b"\n") + 1
        if cut:
            if self.pending:
                self.log_file.write(bytes(self.pending) + data[:cut])
                self.pending.clear()
            else:
                self.log_file.write(data[:cut])
            data = data[cut:]
        self.pending += data
        if self.pending and final:
            self.log_file.hold_last_piece(self.pending)
            self.pending.clear()
        elif len(self.pending) > MAX_LINE_CHARS:
            self.log_file.write(self.pending)
            self.pending.clear()

    def _lines(self, data: bytes, final: bool) -> None:
        if self.rest_of_skipped:
            cut = data.find(b"\n") + 1
            if not cut and not final:
                return
            self.rest_of_skipped = False
            if cut and isinstance(self.on_line, LineBudget):
                self.on_line.skipped(self.name, 1, cut)  # the end of a line a declined chunk began
            data = data[cut:]
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
        for line in lines:
            if line.endswith("\r"):
                line = line[:-1]
            for start in range(0, max(len(line), 1), MAX_LINE_CHARS):
                self._deliver(line[start : start + MAX_LINE_CHARS])

    def _deliver(self, line: str) -> None:
        assert self.on_line is not None
        try:
            self.on_line(self.name, line)
        except Exception:
            if not self.callback_failed:
                log.exception("on_line callback raised on %s; output is still captured", self.name)
                self.callback_failed = True

    def tail_text(self) -> str:
        if self.tail_chars <= 0:
            return ""
        text = bytes(self.tail).decode("utf-8", "replace").replace("\r\n", "\n")
        if text.endswith("\n"):
            text = text.rstrip("\n")
        return text[-self.tail_chars :]


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
        self.log_file = _LogFile(log_path) if log_path is not None else None
        self.pty = False
        out_r, out_w = -1, -1
        if use_pty:
            try:
                out_r, out_w = os.openpty()
                attrs = termios.tcgetattr(out_w)
                attrs[1] &= ~termios.OPOST  # no output processing: "\n" stays "\n"
                attrs[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG)
                termios.tcsetattr(out_w, termios.TCSANOW, attrs)
                os.set_inheritable(out_r, False)
                os.set_inheritable(out_w, False)
                self.pty = True
            except OSError:
                out_r, out_w = -1, -1
        if not self.pty:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        self.child_stdout = out_w
        self.child_stderr = err_w
        self._fds = {
            out_r: _Stream("stdout", on_line, self.log_file, tail_chars),
            err_r: _Stream("stderr", on_line, self.log_file, tail_chars),
        }
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_r, err_r, self._wake_r):
            os.set_blocking(fd, False)
        self._streams = list(self._fds.values())
        self._thread = threading.Thread(target=self._run, name="grd-output", daemon=True)

    def start(self) -> None:
        """Close the child's ends in this process (so EOF can happen) and start the reader thread."""
        self.release_child_ends()
        self._thread.start()

    def release_child_ends(self) -> None:
        """Close the child's ends in this process (once the child has them), so EOF can happen."""
        for fd in (self.child_stdout, self.child_stderr):
            _close(fd)
        self.child_stdout = self.child_stderr = -1

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
        self.release_child_ends()
        for fd in [*self._fds, self._wake_r, self._wake_w]:
            _close(fd)
        self._fds.clear()
        if self.log_file is not None:
            self.log_file.close()

    def finish(self, timeout: float) -> None:
        """Wait up to ``timeout`` for EOF on both streams; then take what is buffered and stop."""
        if self._thread.ident is None:
            if self._fds:
                self._read_loop(end=time.monotonic() + timeout, wake=None)
        else:
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

    # --- reading ------------------------------------------------------------------------------------

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
        return True


def _close(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
