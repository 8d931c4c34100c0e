"""One cgroup v2 per command: exact membership, atomic kill.

Invariant: the command joins its cgroup *before* it executes (``/bin/sh`` writes ``0`` to ``cgroup.procs`` and
then runs or ``exec``s the command), so every process it ever forks starts inside the cgroup or a cgroup below
it, whatever it does with sessions, process groups or its parent. ``kill()`` writes ``1`` to ``cgroup.kill``,
which the kernel applies to the whole subtree at once, including processes forked while it runs. ``close()``
gives an empty cgroup to a background thread (``_Remover``), which keeps up to ``KEEP_EMPTY`` of them for the
next commands (making and removing a cgroup costs the kernel more than all the rest of a short command's
start) and removes the others; one still busy is removed at once (and a warning if it cannot be). A kept
cgroup is handed out again only while it is empty and has no cgroup below it, and only in this process (a
forked child starts with none); every kept one is removed at interpreter exit (``drain``).

Where: the cgroup2 mount is found in ``/proc/self/mounts`` (on hybrid hosts it is e.g.
``/sys/fs/cgroup/unified``), the current process's path from the ``0::`` line of ``/proc/self/cgroup`` (both
read once per process: a grd moved to another cgroup later still makes its commands' cgroups below the first);
commands get ``grd-<pid>-<n>`` below it. Whether that works (mounted, writable, a process can be moved in) is
probed once per process by moving one ``/bin/sh`` in; if not, ``create()`` returns ``None`` and the caller
falls back to the subreaper sweep.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import os
import select
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

from grd_blocks.process import procfs, sweep

__all__ = ["CgroupTree", "cgroup2_mount", "current_cgroup_dir", "drain_removals"]

log = logging.getLogger("grd.process")

KEEP_EMPTY = 4  # emptied cgroups kept for the next commands (see the module docstring)
_counter = itertools.count(1)
_probe_lock = threading.Lock()
_probe_result: bool | None = None

# The join runs in the command's own /bin/sh before anything else; 125 = could not join.
_JOIN = 'echo 0 >{procs} || {{ echo "grd: cannot join cgroup {procs}" >&2; exit 125; }}; '
_JOIN_EXEC = 'echo 0 >"$0" || { echo "grd: cannot join cgroup $0" >&2; exit 125; }; exec "$@"'
# A pre-started shell (``prestart``) joins, then runs the script it reads from stdin (EOF: nothing, exit 0).
_JOIN_WAIT = _JOIN + ". /dev/stdin"


@functools.cache
def cgroup2_mount() -> Path | None:
    """The mount point of the cgroup2 hierarchy, or ``None`` if there is none."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    return Path(fields[1].replace("\\040", " "))
    except OSError:
        return None
    return None


def current_cgroup_dir() -> Path | None:
    """The directory of this process's cgroup2 group (``0::/path``), or ``None`` (read once per process)."""
    global _CURRENT
    pid = os.getpid()
    if _CURRENT is not None and _CURRENT[0] == pid:
        return _CURRENT[1]
    path = _read_current_cgroup_dir()
    _CURRENT = (pid, path)
    return path


_CURRENT: tuple[int, Path | None] | None = None


def _read_current_cgroup_dir() -> Path | None:
    mount = cgroup2_mount()
    if mount is None:
        return None
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as groups:
            for line in groups:
                if line.startswith("0::"):
                    rel = line[3:].strip()
                    if rel.startswith("/..") or " (deleted)" in rel:
                        return None  # outside our cgroup namespace, or gone
                    path = mount / rel.lstrip("/")
                    return path if path.is_dir() else None
    except OSError:
        return None
    return None


def _probe(parent: Path) -> bool:
    """Can a cgroup be made under ``parent`` and a process moved into it? Cleans up after itself."""
    probe = parent / f"grd-{os.getpid()}-probe"
    try:
        probe.mkdir()
    except FileExistsError:
        pass
    except OSError as exc:
        log.debug(
            "cgroup containment unavailable: cannot create %s (%s); using the subreaper sweep", probe, exc
        )
        return False
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", 'echo 0 >"$0"', str(probe / "cgroup.procs")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        ok = done.returncode == 0 and (probe / "cgroup.kill").exists()
        if not ok:
            log.debug("cgroup containment unavailable: cannot move a process into %s", probe)
        return ok
    except OSError:
        return False
    finally:
        _remove(probe)


def _remove(path: Path) -> bool:
    """Remove ``path`` and the cgroups below it, deepest first; False if one is still busy."""
    ok = True
    try:
        subdirs = [entry.path for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        subdirs = []
    for sub in subdirs:
        ok = _remove(Path(sub)) and ok
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return ok


class _Remover:
    """Takes emptied cgroups in a background thread: keeps up to ``KEEP_EMPTY`` for reuse (``take_empty``),
    removes the rest (an ``rmdir`` of a cgroup waits for the kernel, about a millisecond, more under load,
    which need not delay the command's result). ``drain`` removes everything kept or queued (interpreter exit,
    tests); a cgroup left by a grd killed hard goes with the next grd's stale sweep."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start afresh (also in a forked child, where the thread and the kept cgroups are the parent's)."""
        self._cond = threading.Condition()
        self._queue: list[Path] = []
        self._kept: list[Path] = []
        self._draining = False
        self._busy = False
        self._thread: threading.Thread | None = None

    def submit(self, path: Path) -> None:
        with self._cond:
            self._queue.append(path)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="grd-cgroup-rmdir", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def take_empty(self) -> Path | None:
        """A kept empty cgroup, or None."""
        with self._cond:
            return self._kept.pop() if self._kept else None

    def drain(self, timeout: float, *, keep_empty: bool = False) -> bool:
        """Remove every kept cgroup (``keep_empty``: leave them kept) and wait until every queued one has been
        kept or removed (or given up on); False on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            if not keep_empty:
                self._draining = True
                self._queue.extend(self._kept)
                self._kept.clear()
            self._cond.notify_all()
            try:
                while self._queue or self._busy:
                    left = end - time.monotonic()
                    if left <= 0 or self._thread is None:
                        return not self._queue and not self._busy
                    self._cond.wait(left)
            finally:
                self._draining = False
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                path = self._queue.pop(0)
                keep = len(self._kept) < KEEP_EMPTY and not self._draining
                self._busy = True
            if keep and _reusable(path):
                with self._cond:
                    if len(self._kept) < KEEP_EMPTY and not self._draining:
                        self._kept.append(path)
                        continue
            _remove_or_warn(path)


def _reusable(path: Path) -> bool:
    """An empty cgroup with no cgroup below it (kernfs counts a directory's subdirectories in its link
    count)."""
    try:
        with open(path / "cgroup.events", "rb") as events:
            empty = _populated(events.read(256)) is False
        return empty and os.stat(path).st_nlink == 2
    except OSError:
        return False


def _populated(events: bytes) -> bool | None:
    """The ``populated`` flag in the text of a ``cgroup.events`` file; None if it is not there."""
    if b"populated 1" in events:
        return True
    return False if b"populated 0" in events else None


_REMOVER = _Remover()
atexit.register(_REMOVER.drain, 5.0)
os.register_at_fork(after_in_child=_REMOVER.reset)


def drain_removals(timeout: float = 5.0, *, keep_empty: bool = False) -> bool:
    """Remove the kept empty cgroups and wait for the background removal of finished commands' cgroups
    (tests; interpreter exit does it too); ``keep_empty``: only wait until each has been kept or removed."""
    return _REMOVER.drain(timeout, keep_empty=keep_empty)


def _remove_or_warn(path: Path) -> None:
    if not _remove(path):
        log.warning("cgroup %s is still busy and was left in place; remove it with rmdir once empty", path)


def _clean_stale(parent: Path) -> None:
    """Remove empty ``grd-<pid>-*`` cgroups left by grd processes that no longer exist."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        parts = entry.name.split("-")
        ours = len(parts) == 3 and parts[0] == "grd" and parts[1].isdigit()
        if ours and not os.path.exists(f"/proc/{parts[1]}") and entry.is_dir(follow_symlinks=False):
            _remove(Path(entry.path))


class CgroupTree:
    """A command's own cgroup ``grd-<pid>-<n>``; see the module docstring."""

    kind = "cgroup"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.main_pid: int | None = None
        self._events_fd = os.open(path / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)

    @classmethod
    def create(cls) -> CgroupTree | None:
        """An empty cgroup of its own below the current one (a kept one, else a new one), or ``None`` when
        cgroup containment is unavailable here."""
        global _probe_result
        parent = current_cgroup_dir()
        if parent is None:
            return None
        if _probe_result is None:
            with _probe_lock:
                if _probe_result is None:
                    _probe_result = _probe(parent)
                    if _probe_result:
                        _clean_stale(parent)
        if not _probe_result:
            return None
        kept = _REMOVER.take_empty()
        if kept is not None:
            with contextlib.suppress(OSError):
                tree = cls(kept)
                if tree._populated_flag() is False:
                    return tree
                tree._close_events()
            _REMOVER.submit(kept)  # not empty after all (or gone): never share a cgroup
        path = parent / f"grd-{os.getpid()}-{next(_counter)}"
        try:
            path.mkdir()
            return cls(path)
        except OSError as exc:
            log.warning(
                "cannot create cgroup %s (%s); this command uses the subreaper sweep instead", path, exc
            )
            _remove(path)
            return None

    # --- ProcessTree --------------------------------------------------------------------------------

    def prepare(self, argv: list[str], *, shell: bool, env: dict[str, str]) -> list[str]:
        procs = str(self.path / "cgroup.procs")
        if shell:
            # The command's own shell joins first: no extra process and no extra exec.
            return ["/bin/sh", "-c", _JOIN.format(procs=shlex.quote(procs)) + argv[0]]
        return ["/bin/sh", "-c", _JOIN_EXEC, procs, *argv]

    def launcher_argv(self) -> list[str]:
        """A ``/bin/sh`` that joins this cgroup, then runs the script written to its stdin (``prestart``)."""
        procs = shlex.quote(str(self.path / "cgroup.procs"))
        return ["/bin/sh", "-c", _JOIN_WAIT.format(procs=procs), "/bin/sh"]

    def attach(self, pid: int) -> None:
        self.main_pid = pid

    def main_exited(self) -> None:
        self.main_pid = None  # exited: it can no longer be a member outside the cgroup

    def _main_outside(self) -> set[int]:
        """The main process if it runs but has not joined the cgroup yet (a deadline can land between the
        spawn and the join under heavy load); the runner reaps it only after ``close``, so its pid is ours."""
        main = self.main_pid
        return {main} if main is not None and procfs.is_alive(main) else set()

    def live(self) -> set[int]:
        pids: set[int] = self._main_outside()
        if not pids and self._surely_empty():
            return pids
        for root, _dirs, _files in os.walk(self.path):
            try:
                with open(os.path.join(root, "cgroup.procs"), encoding="ascii") as procs:
                    pids.update(int(line) for line in procs if line.strip())
            except (OSError, ValueError):
                continue
        return pids

    def populated(self) -> bool:
        """True while any process is in the cgroup or below it (zombies do not count)."""
        return self._populated_flag() is True

    def _surely_empty(self) -> bool:
        """True if ``cgroup.events`` says no process is in the subtree now; False if it says one is, or
        cannot be read (then the caller looks process by process)."""
        return self._populated_flag() is False

    def _populated_flag(self) -> bool | None:
        """The ``populated`` flag of ``cgroup.events``; None if it cannot be read."""
        try:
            data = os.pread(self._events_fd, 256, 0)
        except OSError:
            return None
        return _populated(data)

    def _close_events(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._events_fd)

    def _reap_inherited(self) -> None:
        """A fallback command runs beside us (we are a subreaper): reap zombies that were in our cgroup."""
        mount = cgroup2_mount()
        if mount is None:
            return
        ours = "0::/" + str(self.path.relative_to(mount))
        me = os.getpid()
        for stat in procfs.all_stats().values():
            if stat.ppid != me or stat.alive:
                continue
            try:
                with open(f"/proc/{stat.pid}/cgroup", encoding="utf-8", errors="replace") as groups:
                    inside = any(line.rstrip("\n") == ours or line.startswith(ours + "/") for line in groups)
            except OSError:
                continue
            if inside:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(stat.pid, os.WNOHANG)

    def signal(self, signum: int) -> int:
        seen: set[int] = set()
        for _ in range(20):
            new = self.live() - seen
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            seen |= new
        return len(seen)

    def kill(self) -> int:
        count = len(self.live())
        try:
            with open(self.path / "cgroup.kill", "w", encoding="ascii") as kill:
                kill.write("1")
            for main in self._main_outside():  # not joined yet: it has forked nothing, killing it is enough
                with contextlib.suppress(ProcessLookupError):
                    os.kill(main, signal.SIGKILL)
            return count
        except OSError as exc:  # kernels before 5.14 have no cgroup.kill: signal until empty
            log.debug("cgroup.kill unavailable in %s (%s); sending SIGKILL pid by pid", self.path, exc)
        total: set[int] = set()
        for _ in range(100):
            pids = self.live()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            total |= pids
        return len(total)

    def wait_empty(self, timeout: float) -> bool:
        end = time.monotonic() + max(0.0, timeout)
        poller = select.poll()
        poller.register(self._events_fd, select.POLLPRI)
        while True:
            outside = self._main_outside()
            if not outside and not self.populated():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            # cgroup.events raises POLLPRI when 'populated' changes; the cap guards against a missed wakeup
            # and re-checks a main process that has not joined (its exit raises no event here).
            poller.poll(min(left, 0.005 if outside else 0.25) * 1000)

    def close(self) -> None:
        empty = not self._main_outside() and not self.populated()
        self._close_events()
        if sweep.is_subreaper():
            self._reap_inherited()
        if empty:
            _REMOVER.submit(self.path)
        else:
            _remove_or_warn(self.path)
