"""Messages between grd and its supervisor processes (the guardian and each command's keeper).

Invariant: a message is one JSON object on a ``SOCK_SEQPACKET`` unix socket, so it arrives whole or not at
all, in order, with the file descriptors sent beside it (``SCM_RIGHTS``); a body too large for one packet
travels in a memfd sent as the last descriptor. Received descriptors are close-on-exec. ``recv`` returns None
once the peer has closed its end: that EOF is how a supervisor learns that grd died, however it died. Strings
keep lone surrogates (JSON escapes them), so an environment value read from ``os.environ`` round-trips
exactly.
"""

from __future__ import annotations

import array
import json
import os
import socket
from collections.abc import Sequence
from typing import Any

__all__ = ["MAX_INLINE", "Message", "pair", "poll", "recv", "send"]

Message = dict[str, Any]
MAX_INLINE = 48 * 1024  # bodies up to this size go inline; larger ones through a memfd
_PACKET = MAX_INLINE + 1024
_MAX_FDS = 8
_SPILLED = "$spilled"


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of message sockets (both ends close-on-exec)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, message: Message, fds: Sequence[int] = ()) -> None:
    """Send ``message`` with ``fds``; raises ``OSError`` (e.g. ``BrokenPipeError``) if the peer is gone."""
    body = json.dumps(message, separators=(",", ":")).encode("ascii")
    spill: int | None = None
    if len(body) > MAX_INLINE:
        spill = os.memfd_create("grd-message", os.MFD_CLOEXEC)
        view = memoryview(body)
        while view:
            view = view[os.write(spill, view) :]
        os.lseek(spill, 0, os.SEEK_SET)
        body = json.dumps({_SPILLED: len(body)}).encode("ascii")
        fds = [*fds, spill]
    try:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sock.sendmsg([body], ancillary)
    finally:
        if spill is not None:
            os.close(spill)


def recv(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """The next message and its descriptors; ``(None, [])`` at EOF. Blocks unless the socket is
    non-blocking (then ``BlockingIOError`` when nothing is waiting)."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(
        _PACKET, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    received = list(fds)
    if not data:
        for fd in received:
            os.close(fd)
        return None, []
    message: Message = json.loads(data)
    if _SPILLED in message and received:
        spill = received.pop()
        try:
            message = json.loads(_read_all(spill, int(message[_SPILLED])))
        finally:
            os.close(spill)
    return message, received


def poll(sock: socket.socket) -> tuple[Message | None, list[int]] | None:
    """``recv`` on a non-blocking socket: None when nothing is waiting, ``(None, [])`` when the peer is gone
    (EOF, or the socket failed)."""
    try:
        return recv(sock)
    except BlockingIOError:
        return None
    except OSError:
        return None, []


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
