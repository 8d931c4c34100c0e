"""Pre-started commands: a ``/bin/sh`` already inside a cgroup of its own, waiting for the script that turns
it into the next command.

Why: moving a process into a cgroup (writing ``cgroup.procs``) waits for an RCU grace period, 10-17 ms on this
kind of host unless another move happened within the last grace period. A spare makes that move in the
background while the previous command runs, so a command then starts with an ``exec``: no fork and no
move on the caller's path.

Invariant: a spare runs nothing of any command before ``Spare.launch``: its shell joins its cgroup first, then
blocks reading its script from stdin, a pipe whose write end only this process holds (close-on-exec, never
passed to a child). ``launch`` writes the whole script at once (stdin to /dev/null, the working directory,
the command's environment as a fresh start gives it, then ``exec`` of the argv, or of ``/bin/sh -c`` and the
text) and closes the pipe; the shell parses the script whole before running any of it (``script``);
from then on the spare *is* the command: same session, same cgroup rules, same output descriptors, the kill
ladder and leftover checks of a freshly spawned command. A spare never used exits on EOF when this process
ends, however it ends (the pipe closes); at interpreter exit it is also killed and its cgroup removed, and a
cgroup left by a grd killed hard is removed by the next grd's stale sweep (``grd-<pid>-<n>``). Spares serve
only the cgroup containment with a PTY for stdout, and only environments whose names are shell identifiers
and whose script fits the pipe; every other command starts the usual way.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from grd_blocks.process.cgroup import CgroupTree
from grd_blocks.process.output import OutputCapture

__all__ = ["Spare", "close_spares", "refill", "script", "take"]

log = logging.getLogger("grd.process")

READY = 2  # spares kept ready: the one taken next has had a whole command's time to join its cgroup
MAX_SCRIPT_BYTES = 60_000  # below the default pipe capacity (64 KiB): ``launch`` never blocks
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STOP_WAIT_S = 2.0  # how long interpreter exit waits for an unused spare to go
_SHELL_OWNED = frozenset({"IFS", "PPID"})  # /bin/sh replaces the inherited value with its own
_DECLINED = frozenset({"OPTIND"})  # /bin/sh parses it at start-up: let the usual start deal with it


@dataclass
class Spare:
    """A shell in ``tree`` (its cgroup, joined or joining), writing to ``output``, reading ``control``."""

    proc: subprocess.Popen[bytes]
    tree: CgroupTree
    output: OutputCapture
    control: int  # write end of the shell's stdin
    cwd: str  # the directory the shell runs in

    def launch(self, text: str) -> bool:
        """Hand the shell its script; False if it is gone or took less than all of it (then discard it)."""
        data = text.encode("utf-8", "surrogateescape")
        try:
            written = os.write(self.control, data)
        except OSError:
            written = -1
        finally:
            _close(self.control)
            self.control = -1
        return written == len(data)

    def discard(self) -> None:
        """Stop the shell and release everything (a spare that cannot or need not be used)."""
        _close(self.control)
        self.control = -1
        self.tree.kill()
        self.tree.wait_empty(_STOP_WAIT_S)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(_STOP_WAIT_S)
        self.tree.close()
        self.output.abort()


def script(argv: list[str], *, shell: bool, env: Mapping[str, str], cwd: str, spare_cwd: str) -> str | None:
    """The text that makes a spare (running in ``spare_cwd``) the command; None if a spare cannot run it.

    The command gets the environment a fresh start gives it (through ``/bin/sh``): every variable exported
    as given, except the ones ``/bin/sh`` sets itself (``IFS``, ``PPID``: exported with the shell's own
    value, as it does) and ``PWD`` (as it would export it). Values travel through the pipe, never on a
    command line. A shell string runs as ``/bin/sh -c TEXT``. The script is one brace group, which the
    shell parses whole before running any of it: a script cut short is a syntax error and runs nothing."""
    lines = ["{", "exec </dev/null"]
    if cwd != spare_cwd:
        lines.append(f"cd -- {shlex.quote(cwd)} || exit 127")
    lines.append("unset OLDPWD")
    for name, value in env.items():
        line = _EXPORTS.get((name, value))
        if line is None:
            line = _export_line(name, value)
            if len(_EXPORTS) >= _MAX_EXPORTS:
                _EXPORTS.clear()
            _EXPORTS[(name, value)] = line
        if line == _DECLINE:
            return None  # the usual start handles these (e.g. BASH_FUNC_x%%, which it drops)
        if line:
            lines.append(line)
    lines.append(f"export PWD={shlex.quote(_pwd(env.get('PWD'), cwd))}")
    target = ["/bin/sh", "-c", argv[0]] if shell else argv
    lines.append("exec " + " ".join(shlex.quote(word) for word in target))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    return text if len(text.encode("utf-8", "surrogateescape")) <= MAX_SCRIPT_BYTES else None


def _export_line(name: str, value: str) -> str:
    """The script line that gives the command ``name=value`` ("" for none: PWD is computed per command;
    ``_DECLINE`` if a spare cannot)."""
    if not _NAME.fullmatch(name) or name in _DECLINED:
        return _DECLINE
    if name in _SHELL_OWNED:
        return f"export {name}"
    return "" if name == "PWD" else f"export {name}={shlex.quote(value)}"


_DECLINE = "\0decline"  # a marker no export line equals
_MAX_EXPORTS = 4096
_EXPORTS: dict[tuple[str, str], str] = {}  # (name, value) -> its line: most of a run's environment repeats


def _pwd(inherited: str | None, cwd: str) -> str:
    """What ``/bin/sh`` started in ``cwd`` exports as PWD: the inherited value if it names that directory,
    else the physical path (remembered per ``cwd`` while it still names the same directory)."""
    try:
        here = os.stat(cwd)
    except OSError:
        return os.path.realpath(cwd)
    for candidate in (inherited, _PHYSICAL.get(cwd)):
        if candidate and candidate.startswith("/"):
            with contextlib.suppress(OSError):
                if os.path.samestat(os.stat(candidate), here):
                    return candidate
    if len(_PHYSICAL) >= 256:
        _PHYSICAL.clear()
    physical = _PHYSICAL[cwd] = os.path.realpath(cwd)
    return physical


_PHYSICAL: dict[str, str] = {}  # cwd -> its realpath, the last time it was computed


class _Pool:
    """Keeps ``READY`` spares; a background thread makes the next one after each ``refill``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spares: list[Spare] = []
        self._thread: threading.Thread | None = None
        self._enabled = os.path.exists("/dev/stdin")
        self._stopping = False
        self._pid = os.getpid()

    def take(self) -> Spare | None:
        """A ready spare, or None while there is none (call ``refill`` once the command runs)."""
        with self._cond:
            if not self._enabled or self._stopping or self._pid != os.getpid():
                return None
            spare = self._spares.pop(0) if self._spares else None
        if spare is not None and spare.proc.poll() is not None:
            spare.discard()
            return None
        return spare

    def refill(self) -> None:
        """Make the next spare in the background (called while a command runs, so the two overlap)."""
        with self._cond:
            usable = self._enabled and not self._stopping and self._pid == os.getpid()
            if usable and len(self._spares) < READY:
                self._start_maker()
                self._cond.notify_all()

    def _start_maker(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._make_loop, name="grd-prestart", daemon=True)
            self._thread.start()

    def _make_loop(self) -> None:
        while True:
            with self._cond:
                while len(self._spares) >= READY and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
            spare = _make()
            with self._cond:
                if spare is None:
                    self._enabled = False
                    return
                if self._stopping:
                    break
                self._spares.append(spare)
        if spare is not None:
            spare.discard()

    def close(self) -> None:
        """Stop making spares and discard the ready ones."""
        with self._cond:
            self._stopping = True
            spares, self._spares = self._spares, []
            self._cond.notify_all()
        if self._pid == os.getpid():
            for spare in spares:
                spare.discard()

    def forget(self) -> None:
        """In a forked child: the spares belong to the parent; close our copies of their pipes."""
        self._cond = threading.Condition()
        for spare in self._spares:
            _close(spare.control)
        self._spares = []
        self._thread = None
        self._enabled = False


def _make() -> Spare | None:
    """A new spare, or None where the cgroup containment is unavailable."""
    tree = CgroupTree.create()
    if tree is None:
        return None
    try:
        output = OutputCapture(use_pty=True)
    except OSError as exc:
        tree.close()
        log.debug("no spare command: %s", exc)
        return None
    control_r, control_w = os.pipe()
    try:
        cwd = os.getcwd()
        proc = subprocess.Popen(
            tree.launcher_argv(),
            stdin=control_r,
            stdout=output.child_stdout,
            stderr=output.child_stderr,
            env={},
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        log.debug("no spare command: %s", exc)
        for fd in (control_r, control_w):
            _close(fd)
        output.abort()
        tree.close()
        return None
    _close(control_r)
    output.release_child_ends()
    tree.attach(proc.pid)
    return Spare(proc=proc, tree=tree, output=output, control=control_w, cwd=cwd)


def _close(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


_POOL = _Pool()


def take() -> Spare | None:
    """A pre-started command shell for this process, if one is ready; see the module docstring."""
    return _POOL.take()


def refill() -> None:
    """Have the next spare made in the background (after a command started, spare or not)."""
    _POOL.refill()


@atexit.register
def close_spares() -> None:
    """Discard the ready spares and make no more (interpreter exit; tests)."""
    _POOL.close()


os.register_at_fork(after_in_child=_POOL.forget)
