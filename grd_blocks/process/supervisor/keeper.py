"""A keeper: the process that starts one command and answers for its whole tree until the tree is gone.

Invariant: every process of the command's tree is a descendant of its keeper and stays one. In ``namespace``
mode the keeper is pid 1 of a PID namespace of its own (and a mount namespace with its own ``/proc``): no
process can leave a PID namespace, orphans are reparented to its init, and when the init exits the kernel
kills everything left in it. Elsewhere (``cgroup`` and ``subreaper`` modes) the keeper is a child subreaper:
orphans are reparented to it, and a process can change its parent only by its parent's death. So the tree is
empty exactly when the keeper has no child left (``waitpid`` says ECHILD), which is when it reports ``empty``;
the exit status it reports is the kernel's for the command's main process.

Reuse: a keeper serves one command at a time. When a tree ends on its own (``waitpid`` says ECHILD, or the
command could not start) with nothing signalled, no stop asked for and no backstop taken, the keeper makes
itself ready for another command, unasked, and says ``ready`` again after every message about that command,
so grd learns the end and the renewal without a round trip of its own; but only if its containment is as it
was made: in ``namespace`` mode the same mount table (a command's mounts must not reach the next command),
with a cgroup the same cgroup, no other member in it and no cgroup below it, and no newer start marked the
lock it held. Otherwise it exits at once (grd, which cannot know, sees its socket close). A keeper whose
command grd signalled, a stop asked for or its backstop ran waits for grd's ``release`` (grd never reuses it).
What it held for a command (its lock) it closes once that command's tree is gone, just before it reports the
tree's end (an ``exit`` that says nothing is left, or ``empty``), or by exiting, so a lock is never released
while a member of its tree is alive, and a retry of the command that starts once grd heard the tree end
finds the lock free.

Signals: the keeper ignores every signal it can, except SIGCHLD (reaping), SIGTERM and ``TAKEOVER_SIGNAL``.
SIGTERM (sent by the kernel when the guardian dies) and EOF on its socket (grd died, however it died) both
*stop* the tree: SIGTERM to every member, up to the command's grace period, SIGKILL to what is left, then
exit. ``TAKEOVER_SIGNAL`` (from a newer start of the same exclusive command, see ``exclusive``) stops the tree
the same way only if a lock the keeper holds now carries the stop mark at ``STOP_MARK_OFFSET``: the request
names the lock, not the keeper, so a keeper that has moved on to another command ignores a request that
arrives late. The command starts with default dispositions and an empty signal mask, in a session of its
own, stdin from /dev/null, stdout and stderr on the descriptors grd sent.

Protocol (``wire`` messages). From grd: ``run`` (exe, argv, env, cwd, grace, umask, ``backstop_at``;
descriptors stdout, stderr and optionally a lock it holds until the tree is gone), ``signal`` (a signal to
every member), ``kill``, ``release``. To grd: ``ready`` (host pid, mode, namespace, cgroup; again after each
command it may serve another after), ``spawn_error`` (errno), ``exit`` (the main process's returncode, Popen
style, and how many members are left: none means the tree is gone), ``signalled`` (a reply), ``empty`` (the
tree is gone, after an ``exit`` that left members), ``stopping`` (a
SIGTERM asked it to stop the tree), ``backstop`` (a ladder step the keeper took itself: ``term`` or ``kill``,
its CLOCK_MONOTONIC time, how many processes got it).

Deadline backstop: ``backstop_at`` is a CLOCK_MONOTONIC time (one clock for the whole host) a margin past
grd's deadline. If grd has not begun its ladder by then (a SIGTERM ``signal`` or a ``kill``; a warning
signal does not count: grd was stopped by SIGSTOP or Ctrl-Z, hung, or starved), the keeper runs it:
SIGTERM, the grace period, SIGKILL, each step reported. A keeper that did is never reused.

Stdlib only: it runs in a process forked from the guardian.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from grd_blocks.process import cgroup, linux, procfs, wire

__all__ = ["KILL_WAIT_S", "STOP_MARK", "STOP_MARK_OFFSET", "STRAY_SIGNALS", "TAKEOVER_SIGNAL", "Keeper"]

KILL_WAIT_S = 5.0  # how long SIGKILLed members get to disappear before the keeper gives up waiting
TAKEOVER_SIGNAL = signal.SIGUSR1  # "check whether a lock you hold asks you to stop"
STOP_MARK_OFFSET = 1 << 16  # where in a lock file a newer start writes STOP_MARK (past the holder's record)
STOP_MARK = b"S"
STRAY_SIGNALS = (  # what a terminal, a shell or the process group may send: every supervisor ignores them
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGPIPE,
    signal.SIGUSR2,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGALRM,
    signal.SIGXFSZ,
)
# Restored to the default action in the command (SIG_IGN would otherwise survive exec).
_DEFAULTS = frozenset(
    s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP) and s < signal.SIGRTMIN
)


class Keeper:
    """The keeper's state and loop; ``serve()`` never returns (the process exits from it)."""

    def __init__(self, sock: socket.socket, *, mode: str, cgroup_dir: Path | None, guardian: int) -> None:
        self.sock = sock
        self.mode = mode
        self.cgroup_dir = cgroup_dir
        self.guardian = guardian
        self.main: int | None = None
        self.returncode: int | None = None
        self.exit_sent = False
        self.empty_sent = False
        self.childless = True
        self.grace_s = 5.0
        self.held: list[int] = []  # descriptors kept open until exit (a lock)
        self.stop_asked = False
        self.signalled = False  # grd asked for a signal or a kill: the tree did not end on its own
        self.renew_due = False  # the command ended: decide whether to serve another (``_renew``)
        self.takeover_check = False
        self.host_pid = os.getpid()
        # The deadline backstop: grd's own deadline plus a margin, on CLOCK_MONOTONIC (one clock for every
        # process of the host). Disarmed once grd runs its ladder (a ``signal`` or ``kill``) or the tree ends.
        self.backstop_at: float | None = None
        self.backstop_kill_at: float | None = None
        self.backstopped = False  # it ran a ladder step itself: never reused
        self.made_as: tuple[bytes | str, ...] = ()  # what ``_containment_state`` read once set up
        self._mounts: select.poll | None = None  # namespace mode: polls its mount table for a change
        self._home = -1  # the directory it started in, and its umask: restored between commands
        self._umask = 0o022

    # --- setup --------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Signals, parent-death signal, cgroup, namespace or subreaper; then ``ready``."""
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, _noop)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(TAKEOVER_SIGNAL, self._on_takeover)
        for signum in STRAY_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        linux.set_parent_death_signal(signal.SIGTERM)
        # Host pids, read from the host's /proc before a namespace's own /proc hides them (getppid() is 0
        # for the init of a PID namespace).
        own = procfs.read_stat(int(os.readlink("/proc/self")))
        if own is None or own.ppid != self.guardian:
            os._exit(0)  # the guardian died before the parent-death signal was armed
        self.host_pid = own.pid
        self._home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._umask = os.umask(0o022)
        os.umask(self._umask)
        problem = None
        try:
            if self.cgroup_dir is not None:
                cgroup.join(self.cgroup_dir)
            if self.mode == "namespace":
                linux.unshare(linux.CLONE_NEWNS)
                linux.mount_private_proc()
                mountinfo = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)  # open for life
                self._mounts = select.poll()
                self._mounts.register(mountinfo, select.POLLPRI)
            else:
                linux.set_child_subreaper(True)
        except OSError as exc:
            problem = f"keeper setup failed in {self.mode} mode: {exc}"
        self.made_as = self._containment_state()
        self._send_ready(problem)
        if problem is not None:
            os._exit(1)

    def _send_ready(self, problem: str | None = None) -> None:
        self._send(
            {
                "event": "ready",
                "pid": self.host_pid,
                "mode": self.mode,
                "namespace": linux.pid_namespace("self") if self.mode == "namespace" else None,
                "cgroup": None if self.cgroup_dir is None else str(self.cgroup_dir),
                "problem": problem,
            }
        )

    def _containment_state(self) -> tuple[bytes | str, ...]:
        """What a command could change about this keeper that the next command would inherit, read as a
        value: what a root process can set on another one (rlimits, OOM score, niceness, CPU affinity). Its
        mount table and cgroup membership are checked in ``_pristine``."""
        limits = _read("/proc/self/limits") + _read("/proc/self/oom_score_adj")
        scheduling = f"{os.getpriority(os.PRIO_PROCESS, 0)} {sorted(os.sched_getaffinity(0))}"
        return limits, scheduling

    def _pristine(self) -> bool:
        """True if the containment is as it was made: no mount or unmount in its namespace since it was made
        (the kernel marks an open ``mountinfo`` when the table changes: ``POLLPRI``), the same rlimits, OOM
        score, niceness and affinity, and with a cgroup: the keeper its only member (so it was not moved out,
        and nothing else was moved in) and no cgroup made below it."""
        if self._mounts is not None and self._mounts.poll(0):
            return False
        if self._containment_state() != self.made_as:
            return False
        if self.cgroup_dir is None:
            return True
        try:
            nested = any(entry.is_dir(follow_symlinks=False) for entry in os.scandir(self.cgroup_dir))
            members = _read(str(self.cgroup_dir / "cgroup.procs")).split()
        except OSError:
            return False
        return not nested and members == [str(os.getpid()).encode()]  # pids as seen from its namespace

    # --- loop ---------------------------------------------------------------------------------------

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = poller.poll(self._poll_ms())
            self._drain_wake()
            self._reap()
            self._backstop()
            if self.takeover_check:
                self.takeover_check = False
                self.stop_asked = self.stop_asked or self._stop_marked()
            if self.stop_asked:
                self._send({"event": "stopping"})
                self._stop_tree_and_exit()
            for fd, _event in ready:
                if fd == self.sock.fileno():
                    self._handle_message()
            if self.renew_due:
                self._renew()

    def _handle_message(self) -> None:
        received = wire.poll(self.sock)
        if received is None:
            return
        message, fds = received
        if message is None:  # grd is gone: stop the tree as its deadline would
            self._stop_tree_and_exit()
            return
        op = message.get("op")
        if op == "run":
            self._run(message, fds)  # takes the descriptors
            return
        for fd in fds:
            os.close(fd)
        if op == "kill" or (op == "signal" and int(message["sig"]) == signal.SIGTERM):
            self.backstop_at = self.backstop_kill_at = None  # grd runs the ladder itself: alive and on time
        if op in ("signal", "kill"):
            self.signalled = True
        if op == "signal":
            count = self._signal(int(message["sig"]))
            self._send({"event": "signalled", "sig": int(message["sig"]), "count": count})
        elif op == "kill":
            count = self._kill()
            self._send({"event": "signalled", "sig": int(signal.SIGKILL), "count": count})
        elif op == "release":
            self._release()

    def _renew(self) -> None:
        """The command ended on its own terms: serve another if nothing of it can reach the next one (see the
        module docstring); exit if only this keeper can tell it must not (grd would otherwise wait for its
        ``ready``); wait for ``release`` if grd knows already (it signalled, or the backstop ran)."""
        self.renew_due = False
        if self.stop_asked or self.signalled or self.backstopped or not self.childless:
            return
        if self._stop_marked() or not self._pristine():
            self._close_held()
            self._exit()
        self._next_command()

    def _release(self) -> None:
        if not self.childless:
            self._kill()
            self._wait_childless(KILL_WAIT_S)
        self._exit()

    def _next_command(self) -> None:
        """The previous tree is gone: close what was held for it (its lock), forget it, say ``ready``."""
        self._close_held()
        os.fchdir(self._home)
        os.umask(self._umask)
        self.main = None
        self.returncode = None
        self.exit_sent = self.empty_sent = False
        self.childless = True
        self.signalled = False
        self.grace_s = 5.0
        self.backstop_at = self.backstop_kill_at = None
        self._send_ready()

    def _close_held(self) -> None:
        for fd in self.held:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.held.clear()

    def _stop_marked(self) -> bool:
        """Does a lock held now carry a newer start's stop mark (see ``exclusive``)?"""
        for fd in self.held:
            with contextlib.suppress(OSError):
                if os.pread(fd, len(STOP_MARK), STOP_MARK_OFFSET) == STOP_MARK:
                    return True
        return False

    # --- the command --------------------------------------------------------------------------------

    def _run(self, message: dict[str, Any], fds: list[int]) -> None:
        if self.main is not None or len(fds) < 2:
            for fd in fds:
                os.close(fd)
            return
        stdout, stderr, *rest = fds
        self.held.extend(rest)
        self.grace_s = float(message.get("grace", 5.0))
        if message.get("backstop_at") is not None and math.isfinite(float(message["backstop_at"])):
            self.backstop_at = float(message["backstop_at"])
        cwd = message.get("cwd")
        try:
            if cwd:
                os.chdir(cwd)
            if message.get("umask") is not None:
                os.umask(int(message["umask"]))
            env = {str(k): str(v) for k, v in message["env"]}
            self.main = os.posix_spawn(
                message["exe"],
                list(message["argv"]),
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, stdout, 1),
                    (os.POSIX_SPAWN_DUP2, stderr, 2),
                ],
                setsid=True,
                setsigdef=_DEFAULTS,
                setsigmask=(),
            )
            self.childless = False
        except OSError as exc:
            self._send(
                {
                    "event": "spawn_error",
                    "errno": exc.errno,
                    "message": exc.strerror or str(exc),
                    "cwd_failed": bool(cwd) and exc.filename == cwd,
                }
            )
            self.renew_due = True
        finally:
            os.close(stdout)
            os.close(stderr)

    def _reap(self) -> None:
        """Reap every exited child; report the main process's exit, then the tree's end, once each."""
        if self.main is None:
            return
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.childless = True
                break
            if pid == 0:
                self.childless = False
                break
            if pid == self.main:
                self.returncode = os.waitstatus_to_exitcode(status)
        if self.returncode is not None and not self.exit_sent:
            self.exit_sent = True
            if self.childless:  # an exit with nothing left is the tree's end: the lock goes first
                self._close_held()
                self.empty_sent = self.renew_due = True
            left = 0 if self.childless else len(self._members())
            self._send({"event": "exit", "returncode": self.returncode, "left": left})
        if self.exit_sent and self.childless and not self.empty_sent:
            self.empty_sent = self.renew_due = True
            self._close_held()  # the tree is gone: its lock is free before grd hears so (a retry takes it)
            self._send({"event": "empty"})

    # --- the deadline backstop ----------------------------------------------------------------------

    def _poll_ms(self) -> int:
        due = self.backstop_kill_at if self.backstop_kill_at is not None else self.backstop_at
        if due is None:
            return 250
        return max(0, min(250, math.ceil((due - time.monotonic()) * 1000)))

    def _backstop(self) -> None:
        """grd missed its deadline (stopped, hung, starved): run the ladder from here and say so (``backstop``
        events with the monotonic time of each step); the outcome is reported as usual."""
        if self.backstop_at is None and self.backstop_kill_at is None:
            return
        if self.childless or self.main is None:
            self.backstop_at = self.backstop_kill_at = None
            return
        now = time.monotonic()
        if self.backstop_at is not None and now >= self.backstop_at:
            self.backstop_at = None
            self.backstopped = True
            if self.grace_s > 0:
                count = self._signal(signal.SIGTERM)
                self._send({"event": "backstop", "step": "term", "at": now, "count": count})
                self.backstop_kill_at = now + self.grace_s
                return
            self.backstop_kill_at = now
        if self.backstop_kill_at is not None and now >= self.backstop_kill_at:
            self.backstop_kill_at = None
            self.backstopped = True
            self._reap()
            if not self.childless:
                count = self._kill()
                self._send({"event": "backstop", "step": "kill", "at": time.monotonic(), "count": count})

    # --- members, signals ---------------------------------------------------------------------------

    def _members(self) -> set[int]:
        """The tree's live processes as this keeper sees them (namespace pids in ``namespace`` mode)."""
        if self.mode == "namespace":
            found = set()
            for name in os.listdir("/proc"):
                if name.isdigit() and name != "1":
                    stat = procfs.read_stat(int(name))
                    if stat is not None and stat.alive:
                        found.add(stat.pid)
            return found
        pids = {pid for pid, stat in procfs.descendants(self.host_pid).items() if stat.alive}
        if self.cgroup_dir is not None:
            pids |= {pid for pid in cgroup.members(self.cgroup_dir) if pid != self.host_pid}
        return pids

    def _signal(self, signum: int) -> int:
        if self.mode == "namespace":
            count = len(self._members())
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signum)  # every process of the namespace but its init, in one call
            return count
        seen: set[int] = set()
        for _ in range(20):  # until no new member appears (one may fork meanwhile)
            new = self._members() - seen
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            seen |= new
        return len(seen)

    def _kill(self) -> int:
        if self.mode == "namespace":
            return self._signal(signal.SIGKILL)  # kill(-1) holds the task list: no fork can slip past it
        stopped: set[int] = set()
        for _ in range(100):  # freeze first, so a fork loop cannot outrun the kill
            new = self._members() - stopped
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= new
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(stopped)

    def _wait_childless(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        pause = 0.001
        while True:
            self._reap()
            if self.childless:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(pause)  # a bounded poll of the kernel's answer; SIGCHLD also wakes the main loop
            pause = min(pause * 2, 0.02)

    def _stop_tree_and_exit(self) -> None:
        """The ladder without grd: SIGTERM, the grace period, SIGKILL; then exit (the namespace goes too)."""
        self._reap()
        if not self.childless and self.main is not None:
            self._signal(signal.SIGTERM)
            if not self._wait_childless(self.grace_s):
                self._kill()
                self._wait_childless(KILL_WAIT_S)
        self._exit()

    def _exit(self) -> NoReturn:
        """Exit 0 when the tree is gone, 3 when a member outlived every kill (the guardian then looks for
        orphans; in ``namespace`` mode the kernel kills them as this init exits)."""
        os._exit(0 if self.childless else 3)

    # --- plumbing -----------------------------------------------------------------------------------

    def _on_term(self, _signum: int, _frame: object) -> None:
        self.stop_asked = True

    def _on_takeover(self, _signum: int, _frame: object) -> None:
        self.takeover_check = True

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            wire.send(self.sock, message)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _noop(_signum: int, _frame: object) -> None:
    """SIGCHLD's handler: its only job is to wake the loop through the wakeup descriptor."""


def keeper_main(sock: socket.socket, *, mode: str, cgroup_dir: Path | None, guardian: int) -> None:
    """Run as a keeper (in a process just forked from the guardian); never returns."""
    try:
        keeper = Keeper(sock, mode=mode, cgroup_dir=cgroup_dir, guardian=guardian)
        keeper.setup()
        keeper.serve()
    except BaseException:
        traceback.print_exc()  # to $GRD_SUPERVISOR_LOG, if set
    finally:
        os._exit(1)
