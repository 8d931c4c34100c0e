"""Linux system calls the supervisor needs that Python 3.11's ``os`` module lacks.

Invariant: every function either does what it names or raises ``OSError`` carrying the kernel's errno; none
returns an error code. Nothing here is called in the grd process itself except ``pid_namespace`` (a
read-only lookup): namespaces and mounts are changed only in the guardian and keeper processes.
"""

from __future__ import annotations

import ctypes
import os

__all__ = [
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "mount_private_proc",
    "pid_namespace",
    "set_child_subreaper",
    "set_parent_death_signal",
    "setns",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REC = 0x4000
_MS_SLAVE = 0x80000
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    """``unshare(2)``: with ``CLONE_NEWPID`` the caller's next child is pid 1 of a new PID namespace."""
    _check(_c().unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    """``setns(2)``: e.g. back to the caller's own PID namespace for its later children."""
    _check(_c().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount_private_proc() -> None:
    """In a new mount namespace: stop mount events from propagating out, then mount a fresh procfs on
    ``/proc`` (so ``/proc`` shows this PID namespace, as ``unshare --mount-proc`` does). Host mounts made
    later still propagate in (slave propagation)."""
    _check(_c().mount(None, b"/", None, ctypes.c_ulong(_MS_REC | _MS_SLAVE), None), "mount --make-rslave /")
    flags = ctypes.c_ulong(_MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _check(_c().mount(b"proc", b"/proc", b"proc", flags, None), "mount proc /proc")


def set_parent_death_signal(signum: int) -> None:
    """``PR_SET_PDEATHSIG``: the kernel sends ``signum`` to this process when its parent (thread) exits."""
    _check(_c().prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def set_child_subreaper(on: bool = True) -> None:
    """``PR_SET_CHILD_SUBREAPER``: orphaned descendants are reparented to this process, not to init."""
    _check(_c().prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(int(on)), 0, 0, 0), "prctl(SUBREAPER)")


def pid_namespace(pid: int | str = "self") -> int | None:
    """The inode of ``pid``'s PID namespace (``/proc/PID/ns/pid``), or None if it cannot be read."""
    try:
        link = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    try:
        return int(link[link.index("[") + 1 : link.index("]")])
    except ValueError:
        return None
