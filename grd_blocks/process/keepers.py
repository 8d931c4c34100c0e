"""grd's side of containment: its guardian process, the keepers it forks, and the choice of containment mode.

Invariant: one guardian per grd process, started on first use (and again if it died); this process holds the
only ends of its sockets to the guardian and to every keeper (close-on-exec, closed in forked children), so
their EOF tells the supervisors that grd died. A keeper is handed out only after it said ``ready`` (its cgroup
joined, its namespace made), so a command never starts half-contained; one is made ahead per mode, so a
command's start costs one message, not a fork, a namespace and a cgroup move. A keeper goes back to the pool
for another command (``give_back``) only after its command exited, its tree was reported empty without grd
having to signal it, and the keeper itself agreed (it says ``ready`` again, unasked, after its last message
about the command, once it found its containment as it was made, see ``supervisor.keeper``; otherwise it
exits); anything else releases it, and the guardian removes its cgroup. At most
``MAX_IDLE`` wait per mode. ``live()`` is an independent count: it reads /proc and the cgroup, not what the
keeper says.

Modes, strongest first (``GRD_CONTAINMENT`` = ``auto`` (default), ``namespace``, ``cgroup``, ``subreaper``;
``GRD_FORCE_FALLBACK=1`` means ``subreaper``): ``namespace`` (the keeper is pid 1 of a PID namespace, plus
a cgroup where one can be made; needs CAP_SYS_ADMIN), ``cgroup`` (the keeper is a child subreaper and the
tree has a cgroup), ``subreaper`` (the keeper is a child subreaper; works everywhere). A mode the host does
not allow falls back to the next one, with a warning naming why. ``GRD_SUPERVISOR_LOG=FILE`` appends the
guardian's and keepers' own stderr (tracebacks of grd bugs) to FILE; otherwise it goes nowhere.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grd_blocks.errors import ProcessError
from grd_blocks.process import cgroup, procfs, wire

__all__ = [
    "CONTAINMENT_ENV",
    "FORCE_FALLBACK_ENV",
    "MODES",
    "Keeper",
    "acquire",
    "give_back",
    "guard_process",
    "requested_mode",
    "shutdown",
]

log = logging.getLogger("grd.process")

MODES = ("namespace", "cgroup", "subreaper")
CONTAINMENT_ENV = "GRD_CONTAINMENT"
FORCE_FALLBACK_ENV = "GRD_FORCE_FALLBACK"
SUPERVISOR_LOG_ENV = "GRD_SUPERVISOR_LOG"  # a file for the guardian's and keepers' stderr (debugging)
READY = 2  # keepers in the pool per mode after a command was handed one (made ahead if the pool is short)
MAX_IDLE = 8  # keepers kept for reuse per mode; more are released
START_TIMEOUT_S = 60.0  # how long a guardian or keeper may take to say it is ready (a loaded host)
REPLY_TIMEOUT_S = 2.0  # how long a keeper may take to answer a signal request before grd acts itself


def requested_mode() -> str:
    """The mode asked for by the environment: ``auto`` or one of ``MODES``."""
    if os.environ.get(FORCE_FALLBACK_ENV, "") not in ("", "0"):
        return "subreaper"
    value = os.environ.get(CONTAINMENT_ENV, "auto").strip().lower() or "auto"
    if value != "auto" and value not in MODES:
        raise ProcessError(
            f"{CONTAINMENT_ENV}={value!r} is not a containment mode: use auto, {', '.join(MODES)}"
        )
    return value


class Keeper:
    """grd's handle on one keeper: the command's start, the events it reports, and the ``ProcessTree`` calls
    the kill ladder makes (see ``tree``)."""

    def __init__(self, sock: socket.socket, mode: str) -> None:
        self.sock = sock
        self.kind = mode
        self.pid: int | None = None  # the keeper's pid on the host
        self.namespace: int | None = None
        self.cgroup: Path | None = None
        self.problem: str | None = None
        self.ready = False
        self.returncode: int | None = None
        self.exited = False
        self.left = 0
        self.empty = False
        self.spawn_error: tuple[int, str, bool] | None = None
        self.lost = False
        self.stopping = False
        self.backstop: dict[str, float] = {}  # the ladder steps the keeper took itself: "term"/"kill" -> time
        self.signalled = False  # grd asked for a signal or a kill: the tree did not end on its own
        self.served = 0  # commands it finished (it is reused after each, if it may)
        self._recycling = False  # given back before its renewal (``ready``) came: what comes first is stale
        self._start_time: int | None = None
        self._stat_pid: int | None = None  # the pid ``_start_time`` was read for
        self._replies: list[int] = []
        self._main_host_pid: int | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    # --- events -------------------------------------------------------------------------------------

    def pump(self) -> None:
        """Take every message waiting now (never blocks)."""
        while not self.lost:
            received = wire.poll(self.sock)
            if received is None:
                return
            message, fds = received
            for fd in fds:
                os.close(fd)
            if message is None:
                self.lost = True
                return
            self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if self._recycling and event != "ready":
            return  # about the previous command: its renewal, ``ready``, comes after every message about it
        if event == "ready":
            self._recycling = False
            self.problem = message.get("problem")
            self.pid = message.get("pid")
            self.namespace = message.get("namespace")
            self.cgroup = Path(message["cgroup"]) if message.get("cgroup") else None
            self.ready = self.problem is None
            # a reused keeper says ``ready`` again from the same process: its start time is known already
            if self.pid is not None and (self._start_time is None or self.pid != self._stat_pid):
                self._stat_pid = self.pid
                stat = procfs.read_stat(int(self.pid))
                self._start_time = stat.start if stat is not None else None
        elif event == "exit":
            self.exited = True
            self.returncode = int(message["returncode"])
            self.left = int(message.get("left", 0))
            self.empty = self.empty or self.left == 0
        elif event == "empty":
            self.empty = True
        elif event == "spawn_error":
            self.spawn_error = (int(message["errno"]), str(message["message"]), bool(message["cwd_failed"]))
        elif event == "signalled":
            self._replies.append(int(message["count"]))
        elif event == "stopping":
            self.stopping = True
        elif event == "backstop":
            self.backstop[str(message["step"])] = float(message["at"])

    def await_ready(self, timeout: float) -> bool:
        """True once the keeper said ``ready`` (its containment in place); False if it failed or is gone."""
        self.wait(lambda: self.ready or self.problem is not None, timeout)
        return self.ready

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Take messages until ``condition()`` holds, the keeper is lost or ``timeout`` passes."""
        end = time.monotonic() + max(0.0, timeout)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        while True:
            self.pump()
            if condition():
                return True
            if self.lost:
                return False
            left = end - time.monotonic()
            if left <= 0:
                return False
            poller.poll(min(left, 1.0) * 1000)

    # --- the command --------------------------------------------------------------------------------

    def start(
        self,
        exe: str,
        argv: Sequence[str],
        env: dict[str, str],
        *,
        cwd: str,
        grace_s: float,
        stdout: int,
        stderr: int,
        hold: Sequence[int] = (),
        backstop_at: float | None = None,
    ) -> None:
        """Have the keeper start the command; raises ``ProcessError`` if the keeper is gone. ``backstop_at``
        (CLOCK_MONOTONIC): when the keeper runs the ladder itself if grd has not begun it."""
        self.ready = False  # busy: the keeper says ``ready`` again once it may serve another command
        message = {
            "op": "run",
            "exe": exe,
            "argv": list(argv),
            "env": list(env.items()),
            "cwd": cwd,
            "grace": grace_s,
            "umask": _umask(),
            "backstop_at": backstop_at,
        }
        try:
            wire.send(self.sock, message, [stdout, stderr, *hold])
        except OSError as exc:
            self.lost = True
            raise ProcessError(f"grd's keeper process (pid {self.pid}) is gone: {exc}") from exc

    @property
    def main_pid(self) -> int | None:
        """The command's main process on the host (its session and process group), while it runs."""
        if self._main_host_pid is None and self.pid is not None:
            try:
                children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            except OSError:
                return None
            self._main_host_pid = int(children[0]) if children else None
        return self._main_host_pid

    # --- ProcessTree --------------------------------------------------------------------------------

    def _request(self, message: dict[str, Any]) -> int | None:
        """Send ``message`` and wait for the keeper's reply (a count); None if it is gone or did not answer
        within ``REPLY_TIMEOUT_S`` (stopped, or stuck)."""
        if self.lost:
            return None
        self._resume()
        self.signalled = True
        before = len(self._replies)
        try:
            wire.send(self.sock, message)
        except OSError:
            self.lost = True
            return None
        if not self.wait(lambda: len(self._replies) > before, REPLY_TIMEOUT_S):
            return None
        return self._replies[before]

    def signal(self, signum: int) -> int:
        """Send ``signum`` to every process of the tree (the keeper does it); how many got it. Without the
        keeper's answer, each process an independent scan finds gets it from here."""
        count = self._request({"op": "signal", "sig": int(signum)})
        if count is None:
            members = self.live()
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            count = len(members)
        return count

    def kill(self) -> int:
        """SIGKILL the whole tree; if the keeper cannot (gone, stopped, stuck), kill it from here
        (``force_kill``)."""
        count = self._request({"op": "kill"})
        if count is None:
            log.warning("grd's keeper (pid %s) did not answer; killing the tree from grd", self.pid)
            count = self.force_kill()
        return count

    def wait_empty(self, timeout: float) -> bool:
        """True once the keeper reported the tree empty (its kernel-given answer) within ``timeout``; with
        the keeper gone, once a /proc scan finds nothing left."""
        end = time.monotonic() + timeout
        if self.wait(lambda: self.empty, timeout):
            return True
        return self.lost and self.wait_gone(end - time.monotonic())

    def wait_gone(self, timeout: float) -> bool:
        """Scan /proc until no process of the tree is left (True) or ``timeout`` passes (False)."""
        end = time.monotonic() + max(0.0, timeout)
        pause = 0.002
        while self.live():
            if time.monotonic() >= end:
                return False
            time.sleep(pause)  # a bounded poll of what the kernel shows; SIGKILLed processes need a moment
            pause = min(2 * pause, 0.05)
        return True

    def live(self) -> set[int]:
        """The tree's live processes by an independent /proc scan: the keeper's descendants, members of its
        PID namespace, members of its cgroup (the keeper itself excluded)."""
        stats = procfs.all_stats()
        found: set[int] = set()
        me = self.pid
        if me is not None and self._is_keeper(stats.get(me)):
            found |= {pid for pid, stat in procfs.descendants(me, stats).items() if stat.alive}
        if self.namespace is not None:
            from grd_blocks.process.linux import pid_namespace

            found |= {
                pid
                for pid, stat in stats.items()
                if stat.alive and pid != me and pid_namespace(pid) == self.namespace
            }
        if self.cgroup is not None:
            found |= {
                pid for pid in cgroup.members(self.cgroup) if pid != me and pid in stats and stats[pid].alive
            }
        return found

    def force_kill(self) -> int:
        """Kill the tree without the keeper's help (it died or stopped answering): the cgroup's atomic kill,
        then each process the scan finds, stopped first; then the keeper itself."""
        self.signalled = True
        members = self.live()
        if self.cgroup is not None:
            cgroup.kill(self.cgroup)
        for signum in (signal.SIGSTOP, signal.SIGKILL):
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
        stats = procfs.all_stats()
        if self.pid is not None and self._is_keeper(stats.get(self.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        return len(members)

    def _resume(self) -> None:
        """SIGCONT the keeper before asking it anything: a command may have stopped it (SIGSTOP; it is the
        command's subreaper and of the same user), which would hold up every step of the ladder until the
        reply times out. Harmless when it runs; only the same keeper (pid and start time) is signalled."""
        if self.pid is not None and self._is_keeper(procfs.read_stat(self.pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGCONT)

    def _is_keeper(self, stat: procfs.ProcStat | None) -> bool:
        same = self._start_time is None or (stat is not None and stat.start == self._start_time)
        return stat is not None and stat.alive and same

    @property
    def reusable(self) -> bool:
        """Its command ended on its own (exited with its tree reported empty, or never started) and nothing
        was signalled or lost: it may serve another command once it says ``ready`` again (``recycle``)."""
        ended = (self.exited and self.empty) or (self.spawn_error is not None and not self.exited)
        bad = self.lost or self.stopping or self.signalled or self.backstop or self.problem is not None
        return ended and not bad

    def recycle(self) -> bool:
        """Forget the command it served, to hand it out again once it says ``ready`` (it does so unasked, or
        exits if its containment changed); False, with nothing changed, unless ``reusable``."""
        if not self.reusable:
            return False
        self.served += 1
        self._recycling = not self.ready  # its renewal not read yet: messages before it are the old command's
        self.returncode = None
        self.exited = self.empty = False
        self.left = 0
        self.spawn_error = None
        self.backstop = {}
        self._replies.clear()
        self._main_host_pid = None
        return True

    def close(self) -> None:
        """Release the keeper: it exits (killing anything left) and the guardian removes its cgroup."""
        with contextlib.suppress(OSError):
            wire.send(self.sock, {"op": "release"})
        self.sock.close()

    def discard(self) -> None:
        """Close without a word (EOF): a keeper with no command exits at once."""
        self.sock.close()


def _umask() -> int | None:
    """This process's umask, read without changing it (``Umask:`` in /proc/self/status, Linux 4.7+)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Guardian:
    """The connection to this process's guardian."""

    def __init__(self) -> None:
        ours, theirs = wire.pair()
        root = str(Path(__file__).resolve().parents[2])  # the directory that holds grd_blocks
        code = (
            f"import sys; sys.path.insert(0, {root!r}); "
            "from grd_blocks.process.supervisor.guardian import main; main()"
        )
        debug = os.environ.get(SUPERVISOR_LOG_ENV)
        try:
            with open(debug or os.devnull, "ab") as errors:
                self.proc = subprocess.Popen(
                    [sys.executable, "-s", "-S", "-c", code, str(theirs.fileno()), str(os.getpid())],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    start_new_session=True,
                )
        except OSError as exc:
            ours.close()
            raise ProcessError(f"cannot start grd's guardian process ({sys.executable}): {exc}") from exc
        finally:
            theirs.close()
        self.sock = ours
        self.lock = threading.Lock()
        poller = select.poll()
        poller.register(ours.fileno(), select.POLLIN)
        hello = None
        if poller.poll(START_TIMEOUT_S * 1000):
            hello, fds = wire.recv(ours)
            for fd in fds:
                os.close(fd)
        if not hello or hello.get("event") != "hello":
            self.close()
            raise ProcessError(
                f"grd's guardian process did not start within {START_TIMEOUT_S:.0f}s "
                f"(exit status {self.proc.poll()}); commands cannot be contained"
            )
        self.pid = int(hello["pid"])
        self.unavailable: dict[str, str | None] = dict(hello["unavailable"])
        self.broken = False

    def mode_for(self, requested: str) -> str:
        """The strongest allowed mode at or below ``requested`` (``auto``: the strongest allowed)."""
        order = list(MODES) if requested == "auto" else list(MODES[MODES.index(requested) :])
        for mode in order:
            if self.unavailable.get(mode) is None:
                if requested not in ("auto", mode):
                    _warn_once(requested, self.unavailable.get(requested), mode)
                return mode
        return "subreaper"

    def request(self, mode: str) -> Keeper:
        ours, theirs = wire.pair()
        ours.setblocking(False)
        want_cgroup = mode != "subreaper" and self.unavailable.get("cgroup") is None
        try:
            with self.lock:
                wire.send(self.sock, {"op": "keeper", "mode": mode, "cgroup": want_cgroup}, [theirs.fileno()])
        except OSError:
            self.broken = True
            ours.close()
            raise
        finally:
            theirs.close()
        return Keeper(ours, mode)

    def guard(self, pid: int, start: int, grace_s: float) -> None:
        with self.lock:
            wire.send(self.sock, {"op": "guard", "pid": pid, "start": start, "grace": grace_s})

    def close(self) -> None:
        self.sock.close()


_warned: set[str] = set()


def _warn_once(requested: str, why: str | None, mode: str) -> None:
    if requested not in _warned:
        _warned.add(requested)
        log.warning(
            "containment %r is not available here (%s); commands use %r instead", requested, why, mode
        )


class _Supervision:
    """The process-wide guardian link and the keepers made ahead."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.lock = threading.Lock()
        self.guardian: _Guardian | None = None
        self.ready: dict[str, list[Keeper]] = {mode: [] for mode in MODES}

    def _link(self) -> _Guardian:
        if self.guardian is None or self.guardian.broken or self.guardian.proc.poll() is not None:
            if self.guardian is not None:
                self._drop_pool()
                self.guardian.close()
            self.guardian = _Guardian()
        return self.guardian

    def _drop_pool(self) -> None:
        for keepers in self.ready.values():
            for keeper in keepers:
                keeper.discard()
            keepers.clear()

    def acquire(self, requested: str) -> Keeper:
        last = "no attempt"
        failures = 0
        while failures < 3:
            with self.lock:
                guardian = self._link()
                mode = guardian.mode_for(requested)
                pool = self.ready[mode]
                try:
                    keeper = _take(pool) or guardian.request(mode)
                    while len(pool) < READY - 1:
                        pool.append(guardian.request(mode))
                except OSError as exc:
                    last = f"the guardian is gone ({exc})"
                    continue
            if keeper.await_ready(START_TIMEOUT_S):
                return keeper
            keeper.discard()
            if keeper.served and keeper.lost and keeper.problem is None:
                continue  # a reused keeper that found its containment changed exits instead: not a failure
            failures += 1
            last = keeper.problem or ("it did not answer" if not keeper.lost else "it exited at once")
        raise ProcessError(f"grd could not start a keeper process for the command: {last}")

    def give_back(self, keeper: Keeper) -> None:
        with self.lock:
            guardian = self.guardian
            pool = self.ready.get(keeper.kind)
            alive = guardian is not None and not guardian.broken and keeper.sock.fileno() >= 0
            if alive and pool is not None and len(pool) < MAX_IDLE and keeper.recycle():
                pool.insert(0, keeper)
                return
        keeper.close()

    def guard(self, pid: int, grace_s: float) -> None:
        stat = procfs.read_stat(pid)
        if stat is None:
            return
        with self.lock:
            self._link().guard(pid, stat.start, grace_s)

    def close(self) -> None:
        with self.lock:
            self._drop_pool()
            if self.guardian is not None:
                self.guardian.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.guardian.proc.wait(2.0)
                self.guardian = None

    def forget(self) -> None:
        """In a forked child: the guardian and keepers are the parent's; close our copies of the sockets."""
        for keepers in self.ready.values():
            for keeper in keepers:
                with contextlib.suppress(OSError):
                    keeper.sock.close()
        if self.guardian is not None:
            with contextlib.suppress(OSError):
                self.guardian.sock.close()
        self.reset()


def _take(pool: list[Keeper]) -> Keeper | None:
    """The first keeper of ``pool`` (the one given back last: it renewed itself as its command ended), after
    dropping those found gone."""
    for keeper in list(pool):
        keeper.pump()
        if keeper.lost or keeper.problem is not None:
            pool.remove(keeper)
            keeper.discard()
    return pool.pop(0) if pool else None


_SUPERVISION = _Supervision()
atexit.register(_SUPERVISION.close)
os.register_at_fork(after_in_child=_SUPERVISION.forget)


def acquire(requested: str | None = None) -> Keeper:
    """A ready keeper for one command, in the mode asked for (default: ``requested_mode()``)."""
    return _SUPERVISION.acquire(requested or requested_mode())


def prepare_guardian() -> None:
    """Start this process's guardian now (it starts on first use otherwise), so that guarding a process later
    is one message, with no window in which the process is not yet guarded."""
    with _SUPERVISION.lock:
        _SUPERVISION._link()


def give_back(keeper: Keeper) -> None:
    """Done with ``keeper``: it waits in the pool for another command if it may (see the module docstring),
    else it is released."""
    _SUPERVISION.give_back(keeper)


def guard_process(pid: int, grace_s: float = 5.0) -> None:
    """Have the guardian stop ``pid`` (SIGTERM, then SIGKILL after ``grace_s``) if this process dies first;
    e.g. a server this process started and nothing else would stop."""
    _SUPERVISION.guard(pid, grace_s)


def shutdown() -> None:
    """Release the keepers made ahead and let the guardian exit (interpreter exit does this; tests)."""
    _SUPERVISION.close()
