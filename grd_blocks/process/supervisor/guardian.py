"""The guardian: one helper process per grd process, which forks a keeper for every command and outlives grd
just long enough to make sure nothing grd started keeps running.

Invariant: the guardian holds the only other end of grd's socket, so it sees EOF the moment grd dies, however
it dies (SIGKILL, the OOM killer, a lost worker). Then every keeper (which sees its own EOF) stops its tree
within that command's grace period, the processes grd asked it to guard (the ephemeral Prefect API server) get
SIGTERM and, after their grace, SIGKILL, and the guardian exits once its keepers are gone. It is a child
subreaper: a process orphaned by a keeper that died is reparented to it and killed with its descendants, and
what is left in that keeper's cgroup is killed through ``cgroup.kill``. Every reaped keeper's cgroup is
removed, the removal retried while the cgroup is still busy (also for a few seconds after grd is gone); a
cgroup name still taken is skipped, never shared, so a keeper never starts in another's cgroup. It
lives in a session of its own and ignores every signal it can, so a signal meant for grd's process group does
not reach it; keepers die with it (their parent-death signal). Stdlib only: its start-up stays cheap.

Protocol (``wire``). From grd: ``keeper`` (mode, whether to give it a cgroup; the keeper's socket as the
descriptor), ``guard`` (pid, start time, grace). To grd: ``hello`` (its pid, which modes this host allows, why
not the others).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from grd_blocks.process import cgroup, linux, procfs, wire
from grd_blocks.process.supervisor.keeper import STRAY_SIGNALS, TAKEOVER_SIGNAL, keeper_main

__all__ = ["main"]

_IGNORED = (*STRAY_SIGNALS, signal.SIGTERM, TAKEOVER_SIGNAL)  # the guardian stops only on EOF
_RETRY_MS = 100  # how often a busy cgroup of a reaped keeper is tried again
_SHUTDOWN_REMOVAL_S = 5.0  # how long a guardian whose grd is gone keeps trying, once its keepers are reaped
_NAME_TRIES = 1000


class Guardian:
    def __init__(self, sock: socket.socket, owner: int) -> None:
        self.sock = sock
        self.owner = owner
        self.keepers: dict[int, Path | None] = {}  # keeper pid -> its cgroup
        self.guarded: list[tuple[int, int, float]] = []  # (pid, start time, grace)
        self.names = itertools.count(1)
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.cgroup_parent: Path | None = None
        self.modes: dict[str, str | None] = {}
        self.unremoved: list[Path] = []  # cgroups of reaped keepers still busy: removal retried

    # --- start --------------------------------------------------------------------------------------

    def setup(self) -> None:
        with contextlib.suppress(OSError):
            os.setsid()
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, _noop)
        for signum in _IGNORED:
            signal.signal(signum, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            linux.set_child_subreaper(True)
        self.modes = self._probe()
        wire.send(self.sock, {"event": "hello", "pid": os.getpid(), "unavailable": self.modes})

    def _probe(self) -> dict[str, str | None]:
        """For each mode, None if this host allows it, else why not."""
        parent = cgroup.current_cgroup_dir()
        cgroup_problem: str | None = None
        if parent is None:
            cgroup_problem = "no cgroup2 hierarchy is mounted (or this process's cgroup is not in it)"
        else:
            cgroup_problem = self._probe_child(parent / f"grd-{self.owner}-probe", namespace=False)
            if cgroup_problem is None:
                self.cgroup_parent = parent
                cgroup.clean_stale(parent)
        namespace_problem = self._probe_child(None, namespace=True)
        return {"namespace": namespace_problem, "cgroup": cgroup_problem, "subreaper": None}

    def _probe_child(self, cgroup_dir: Path | None, *, namespace: bool) -> str | None:
        """Fork a child that does what a keeper of that mode does; None if it worked, else why not."""
        try:
            if cgroup_dir is not None:
                cgroup.create(cgroup_dir.parent, cgroup_dir.name)
            if namespace:
                linux.unshare(linux.CLONE_NEWPID)
        except OSError as exc:
            if cgroup_dir is not None:
                cgroup.remove(cgroup_dir)
            return str(exc)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if cgroup_dir is not None:
                    cgroup.join(cgroup_dir)
                if namespace:
                    linux.unshare(linux.CLONE_NEWNS)
                    linux.mount_private_proc()
                code = 0
            except OSError as exc:
                os.write(write_end, str(exc).encode()[:500])
            finally:
                os._exit(code)
        if namespace:
            linux.setns(self.own_pidns, linux.CLONE_NEWPID)
        os.close(write_end)
        _pid, status = os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as reason:
            text = reason.read().decode("utf-8", "replace")
        if cgroup_dir is not None:
            cgroup.remove(cgroup_dir)
        if os.waitstatus_to_exitcode(status) == 0:
            return None
        return text or f"probe exited with status {status}"

    # --- loop ---------------------------------------------------------------------------------------

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = poller.poll(_RETRY_MS if self.unremoved else None)
            for fd, _event in ready:
                if fd == self._wake_r:
                    self._drain_wake()
                    self._reap()
                elif not self._handle_message():
                    self._shutdown()
            self._retry_removals()

    def _handle_message(self) -> bool:
        try:
            message, fds = wire.recv(self.sock)
        except OSError:
            return False
        if message is None:
            return False
        op = message.get("op")
        if op == "keeper" and fds:
            self._spawn(str(message.get("mode", "subreaper")), bool(message.get("cgroup")), fds[0])
            fds = fds[1:]
        elif op == "guard":
            self.guarded.append((int(message["pid"]), int(message["start"]), float(message["grace"])))
        for fd in fds:
            os.close(fd)
        return True

    def _spawn(self, mode: str, want_cgroup: bool, keeper_fd: int) -> None:
        keeper_sock = socket.socket(fileno=keeper_fd)
        cgroup_dir: Path | None = None
        if want_cgroup and self.cgroup_parent is not None:
            cgroup_dir = self._new_cgroup(self.cgroup_parent)
        namespace = mode == "namespace"
        me = os.getpid()
        try:
            if namespace:
                linux.unshare(linux.CLONE_NEWPID)
            pid = os.fork()
        except OSError as exc:
            with contextlib.suppress(OSError):
                wire.send(keeper_sock, {"event": "ready", "problem": f"cannot start a keeper: {exc}"})
            keeper_sock.close()
            if cgroup_dir is not None:
                cgroup.remove(cgroup_dir)
            return
        if pid == 0:
            try:
                self.sock.close()
                signal.set_wakeup_fd(-1)
                keeper_main(keeper_sock, mode=mode, cgroup_dir=cgroup_dir, guardian=me)
            finally:
                os._exit(1)
        if namespace:
            linux.setns(self.own_pidns, linux.CLONE_NEWPID)
        keeper_sock.close()
        self.keepers[pid] = cgroup_dir

    def _new_cgroup(self, parent: Path) -> Path | None:
        """A new, empty ``grd-{owner}-{n}`` cgroup; a name taken (by an earlier guardian of the same grd
        process whose cgroup is still being removed) is skipped, never shared; None if the kernel refuses."""
        for _ in range(_NAME_TRIES):
            try:
                return cgroup.create(parent, f"grd-{self.owner}-{next(self.names)}")
            except FileExistsError:
                continue
            except OSError:
                return None
        return None

    def _release_cgroup(self, cgroup_dir: Path, *, kill: bool) -> None:
        """Remove a reaped keeper's cgroup; with ``kill`` first SIGKILL what is left in it (a keeper that
        died abnormally may have left its command's tree there). A cgroup still busy is retried."""
        if kill:
            cgroup.kill(cgroup_dir)
        if not cgroup.remove(cgroup_dir):
            self.unremoved.append(cgroup_dir)

    def _retry_removals(self) -> None:
        if self.unremoved:
            self.unremoved = [path for path in self.unremoved if not cgroup.remove(path)]

    def _reap(self) -> None:
        orphaned = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in self.keepers:
                cgroup_dir = self.keepers.pop(pid)
                # A keeper exits 0 once its tree is gone (1: it never started one); any other end may
                # have left orphans, which are reparented to us, and members in its cgroup.
                abnormal = os.waitstatus_to_exitcode(status) not in (0, 1)
                orphaned = orphaned or abnormal
                if cgroup_dir is not None:
                    self._release_cgroup(cgroup_dir, kill=abnormal)
        if orphaned:
            self._kill_orphans()
        self._retry_removals()

    def _kill_orphans(self) -> None:
        """Children that are not keepers were orphaned by a keeper that died: kill them and their trees."""
        stats = procfs.all_stats()
        me = os.getpid()
        for pid, stat in stats.items():
            if stat.ppid == me and pid not in self.keepers and stat.alive:
                tree = [pid, *procfs.descendants(pid, stats)]
                for member in tree:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(member, signal.SIGSTOP)
                for member in tree:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(member, signal.SIGKILL)

    # --- grd is gone --------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Keepers stop their own trees (they saw EOF too); guarded processes get SIGTERM, then SIGKILL after
        their grace; exit once every keeper has been reaped."""
        for keeper in self.keepers:  # a command in the subreaper modes can stop its keeper: wake it
            with contextlib.suppress(ProcessLookupError):
                os.kill(keeper, signal.SIGCONT)
        now = time.monotonic()
        pending: list[tuple[int, float]] = []
        for pid, start, grace in self.guarded:
            if _same_process(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                pending.append((pid, now + grace))
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        give_up_removing_at = now + _SHUTDOWN_REMOVAL_S
        while self.keepers or pending or (self.unremoved and time.monotonic() < give_up_removing_at):
            poller.poll(50)
            self._drain_wake()
            self._reap()
            now = time.monotonic()
            if self.keepers or pending:
                give_up_removing_at = now + _SHUTDOWN_REMOVAL_S
            still: list[tuple[int, float]] = []
            for pid, kill_at in pending:
                stat = procfs.read_stat(pid)
                if stat is None or not stat.alive:
                    continue
                if now >= kill_at:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    continue
                still.append((pid, kill_at))
            pending = still
        os._exit(0)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass


def _same_process(pid: int, start: int) -> bool:
    stat = procfs.read_stat(pid)
    return stat is not None and stat.alive and stat.start == start


def _noop(_signum: int, _frame: object) -> None:
    """SIGCHLD's handler: its only job is to wake the loop through the wakeup descriptor."""


def main() -> None:
    """Entry point: ``python -c '...main()' SOCKET_FD OWNER_PID`` (started by grd, see ``keepers``)."""
    fd, owner = int(sys.argv[1]), int(sys.argv[2])
    guardian = Guardian(socket.socket(fileno=fd), owner)
    try:
        guardian.setup()
        guardian.serve()
    except BaseException:
        traceback.print_exc()  # to $GRD_SUPERVISOR_LOG, if set
    finally:
        os._exit(1)
