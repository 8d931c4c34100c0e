"""``run_command``: start a command in its own session and containment, wait for it, stop all of it.

Invariant: when ``run_command`` returns (or raises, e.g. on KeyboardInterrupt), no process of the command's
tree is running: on the deadline or ``cancel`` the kill ladder runs (SIGTERM, ``grace_s``, SIGKILL); after a
normal exit any leftover descendant (a daemonized grandchild) is stopped by the same ladder. A command whose
deadline has already passed, or whose cancel event is already set, is not started. Spawn failures (missing
executable or cwd) come back as an outcome with returncode 127 (126: not executable); ``ProcessError`` is
raised only for invalid arguments.

Fast path (see ``prestart``): where a pre-started shell is ready, the command is its ``exec``: no fork and no
cgroup move on the caller's path. Output is read by the waiting thread itself for the first ``INLINE_S`` (a
short command needs no reader thread), then handed to the reader thread, which also serves the kill ladder's
grace period.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import secrets
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from grd_blocks.errors import ProcessError
from grd_blocks.process import prestart
from grd_blocks.process.ladder import KILL_WAIT_S, LadderResult, stop_tree
from grd_blocks.process.outcome import CommandOutcome
from grd_blocks.process.output import OnLine, OutputCapture
from grd_blocks.process.tree import ProcessTree, fallback_forced, open_tree

__all__ = ["CANCEL_TICK_S", "DRAIN_S", "INLINE_S", "run_command"]

log = logging.getLogger("grd.process")

CANCEL_TICK_S = 0.02  # how often a cancel event is checked while the command runs
DRAIN_S = 1.0  # how long output is still read after the tree is gone, if a stray holder keeps it open
_MAX_TICK_S = 0.25  # re-read the caller's clock at least this often (it need not be real time)
INLINE_S = 0.05  # output is read by the waiting thread this long, then by a reader thread
_NO_PIDFD_STEP_S = 0.002  # without a pidfd, how often exit is checked

_tokens = itertools.count(1)


def run_command(
    run: str | Sequence[str],
    *,
    deadline: float = math.inf,
    grace_s: float = 5.0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    log_path: str | Path | None = None,
    on_line: OnLine | None = None,
    cancel: threading.Event | None = None,
    tail_chars: int = 4000,
    clock: Callable[[], float] = time.monotonic,
    use_pty: bool = True,
) -> CommandOutcome:
    """Run ``run`` (a string runs under ``/bin/sh -c``, a list is executed directly) until it exits,
    ``deadline`` (absolute, on ``clock``) passes or ``cancel`` is set; see the module docstring for the
    guarantees.

    ``env`` is the child's full environment (``None``: inherit); ``PYTHONUNBUFFERED=1`` is added unless it
    sets ``PYTHONUNBUFFERED``. stdout is a PTY (``use_pty=False``: a pipe) so C stdio and Python flush per
    line.
    """
    argv, shell = _normalize(run)
    if not grace_s >= 0 or math.isinf(grace_s):
        raise ProcessError(f"grace_s={grace_s!r} is invalid: it must be a finite number >= 0; use e.g. 5.0")
    if tail_chars < 0:
        raise ProcessError(f"tail_chars={tail_chars!r} is invalid: it must be >= 0")
    label = _label(argv, shell)
    started = clock()
    log_str = str(log_path) if log_path is not None else None
    if cancel is not None and cancel.is_set():
        log.info("%s: not started, cancelled before it began", label)
        return _not_started(log_str, cancelled=True)
    if deadline <= started:
        log.info("%s: not started, its deadline passed %.3fs ago", label, started - deadline)
        return _not_started(log_str, timed_out=True)

    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    problem = _spawn_problem(argv, shell, child_env, cwd)
    if problem is not None:
        log.warning("%s: %s", label, problem[1])
        _write_log(log_path, problem[1])
        return _not_started(log_str, returncode=problem[0], spawn_error=problem[1])

    spare = _launch_spare(argv, shell, child_env, cwd, log_path, on_line, tail_chars) if use_pty else None
    if spare is not None:
        return _supervise(
            spare.proc, spare.tree, spare.output, label, deadline, grace_s, cancel, clock, started, log_str
        )
    try:
        output = OutputCapture(use_pty=use_pty, log_path=log_path, on_line=on_line, tail_chars=tail_chars)
    except OSError as exc:
        raise _log_error(log_str, exc) from exc
    tree = open_tree(f"{os.getpid()}-{next(_tokens)}-{secrets.token_hex(4)}")
    try:
        proc = subprocess.Popen(
            tree.prepare(argv, shell=shell, env=child_env),
            stdin=subprocess.DEVNULL,
            stdout=output.child_stdout,
            stderr=output.child_stderr,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        output.abort()
        tree.close()
        code, message = _describe_spawn_error(exc, argv, shell, cwd)
        log.warning("%s: %s", label, message)
        _write_log(log_path, message)
        return _not_started(log_str, returncode=code, spawn_error=message)
    tree.attach(proc.pid)
    output.release_child_ends()
    return _supervise(proc, tree, output, label, deadline, grace_s, cancel, clock, started, log_str)


def _log_error(log_str: str | None, exc: OSError) -> ProcessError:
    return ProcessError(f"cannot open the log file {log_str!r} ({exc}): pass a writable log_path")


def _launch_spare(
    argv: list[str],
    shell: bool,
    env: dict[str, str],
    cwd: str | Path | None,
    log_path: str | Path | None,
    on_line: OnLine | None,
    tail_chars: int,
) -> prestart.Spare | None:
    """Start the command in a pre-started shell (no fork, no cgroup move on this path), if one is ready and
    can run it; None: start it the usual way."""
    if fallback_forced():
        return None
    try:
        where = os.path.abspath(cwd) if cwd is not None else os.getcwd()
    except OSError:
        return None
    if cwd is not None and not os.access(where, os.X_OK):
        return None  # the usual start reports it as a spawn error
    spare = prestart.take()
    if spare is None:
        return None
    text = prestart.script(argv, shell=shell, env=env, cwd=where, spare_cwd=spare.cwd)
    if text is None:
        spare.discard()
        return None
    try:
        spare.output.bind(log_path=log_path, on_line=on_line, tail_chars=tail_chars)
    except OSError as exc:
        spare.discard()
        raise _log_error(None if log_path is None else str(log_path), exc) from exc
    if not spare.launch(text):
        spare.discard()
        return None
    return spare


def _supervise(
    proc: subprocess.Popen[bytes],
    tree: ProcessTree,
    output: OutputCapture,
    label: str,
    deadline: float,
    grace_s: float,
    cancel: threading.Event | None,
    clock: Callable[[], float],
    started: float,
    log_str: str | None,
) -> CommandOutcome:
    """Wait for exit, deadline or cancel; run the ladder; always leave the tree dead and the output closed."""
    ladder = LadderResult(term_sent_s=None, kill_sent_s=None, survivors=0)
    reason: str | None = None
    leftover = 0
    stopped = False
    returncode: int | None = None
    try:
        prestart.refill()  # the next command's shell starts while this one runs
        reason = _wait(proc, deadline, cancel, clock, output)
        if reason is None:
            # Not reaped until the tree is closed: the main pid (= session id) must not be reused meanwhile.
            tree.main_exited()
            left = tree.live()
            leftover = len(left)
            if left:
                log.warning(
                    "%s: exited with %s but left %d process(es) running (pids %s); stopping them",
                    label,
                    _peek_returncode(proc.pid),
                    leftover,
                    ", ".join(map(str, sorted(left)[:10])),
                )
                output.hand_over()
                ladder = stop_tree(
                    tree, grace_s=grace_s, why="leftover processes", label=label, clock=clock, started=started
                )
        else:
            output.hand_over()  # the ladder may wait out the grace period while the command still prints
            why = "cancelled" if reason == "cancel" else f"deadline reached after {clock() - started:.3f}s"
            ladder = stop_tree(tree, grace_s=grace_s, why=why, label=label, clock=clock, started=started)
        stopped = True
    finally:
        if not stopped:  # interrupted (KeyboardInterrupt, a cancellation exception): kill now, then re-raise
            tree.kill()
            tree.wait_empty(KILL_WAIT_S)
        if returncode is None:
            try:
                returncode = proc.wait(KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                returncode = None
        tree.close()
        output.finish(DRAIN_S)
    return CommandOutcome(
        returncode=returncode,
        timed_out=reason == "deadline",
        cancelled=reason == "cancel",
        elapsed_s=clock() - started,
        term_sent_s=ladder.term_sent_s,
        kill_sent_s=ladder.kill_sent_s,
        survivors=ladder.survivors,
        stdout_tail=output.stdout_tail,
        stderr_tail=output.stderr_tail,
        log_path=log_str,
        containment=tree.kind,
        spawn_error=None,
        leftover=leftover,
        pid=proc.pid,
    )


def _wait(
    proc: subprocess.Popen[bytes],
    deadline: float,
    cancel: threading.Event | None,
    clock: Callable[[], float],
    output: OutputCapture,
) -> str | None:
    """None once the main process has exited (not reaped); else "deadline" or "cancel". Output is read in
    this thread for the first ``INLINE_S`` (a short command needs no reader thread), then by the reader."""
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    poller = select.poll()
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    for fd in output.open_fds:
        poller.register(fd, select.POLLIN)
    inline_until = time.monotonic() + INLINE_S

    def exited(timeout: float) -> bool:
        nonlocal inline_until
        if inline_until and time.monotonic() >= inline_until:
            for fd in output.open_fds:
                poller.unregister(fd)
            output.hand_over()
            inline_until = 0.0
        end = time.monotonic() + timeout
        while True:
            step = timeout if pidfd is not None else min(timeout, _NO_PIDFD_STEP_S)
            if inline_until:
                step = min(step, max(0.0, inline_until - time.monotonic()))
            ready = poller.poll(math.ceil(step * 1000))
            gone = False
            for fd, _event in ready:
                if fd == pidfd:
                    gone = True
                else:
                    output.pump(fd, poller)
            if gone or (pidfd is None and _has_exited(proc.pid)):
                return True
            if time.monotonic() >= end or (inline_until and time.monotonic() >= inline_until):
                return False

    tick = CANCEL_TICK_S if cancel is not None else _MAX_TICK_S
    try:
        while True:
            if cancel is not None and cancel.is_set():
                return None if exited(0) else "cancel"
            left = deadline - clock()
            if left <= 0:
                return None if exited(0) else "deadline"
            if exited(min(left, tick)):
                return None
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _has_exited(pid: int) -> bool:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _peek_returncode(pid: int) -> int | None:
    """The exit status of an exited child without reaping it (Popen style: -N for signal N)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _normalize(run: str | Sequence[str]) -> tuple[list[str], bool]:
    if isinstance(run, str):
        if not run.strip():
            raise ProcessError(
                "the command is empty: give a shell string like 'echo hi' or a list like ['echo']"
            )
        return [run], True
    if isinstance(run, bytes) or not isinstance(run, Sequence):
        raise ProcessError(f"command {run!r} is invalid: pass a string (run by /bin/sh) or a list of strings")
    argv = [os.fspath(arg) for arg in run]
    if not argv or not argv[0]:
        raise ProcessError(f"command {run!r} is empty: give at least the executable, e.g. ['python', 'x.py']")
    if not all(isinstance(arg, str) for arg in argv):
        raise ProcessError(f"command {run!r} is invalid: every argument must be a string")
    return argv, False


def _label(argv: list[str], shell: bool) -> str:
    text = argv[0] if shell else " ".join(argv)
    return f"command {text[:57] + '...' if len(text) > 60 else text!r}"


def _spawn_problem(
    argv: list[str], shell: bool, env: Mapping[str, str], cwd: str | Path | None
) -> tuple[int, str] | None:
    """(returncode, message) if the command cannot start; checked before anything is created."""
    if cwd is not None and not os.path.isdir(cwd):
        return 127, (
            f"working directory {str(cwd)!r} does not exist or is not a directory: "
            "create it or fix the command's cwd"
        )
    if shell:
        return None
    exe = argv[0]
    if os.sep in exe:
        path = exe if os.path.isabs(exe) or cwd is None else os.path.join(cwd, exe)
        if not os.path.exists(path):
            return 127, f"executable {exe!r} does not exist: check the path (relative paths start at the cwd)"
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return (
                126,
                f"executable {exe!r} is not an executable file: chmod +x it or run it via its interpreter",
            )
        return None
    search = env.get("PATH", os.defpath)
    if _which(exe, search) is None:
        return 127, (
            f"executable {exe!r} was not found on PATH ({search}): install it, activate its "
            "environment, or give its absolute path"
        )
    return None


def _which(exe: str, search: str) -> str | None:
    """``shutil.which`` with found paths remembered (checked again with ``access`` and ``isdir``, as
    ``shutil.which`` checks them); a miss is looked up every time, so an executable installed meanwhile is
    found."""
    found = _FOUND.get((exe, search))
    if found is not None and os.access(found, os.X_OK) and not os.path.isdir(found):
        return found
    found = shutil.which(exe, path=search)
    if found is not None:
        if len(_FOUND) >= 256:
            _FOUND.clear()
        _FOUND[(exe, search)] = found
    return found


_FOUND: dict[tuple[str, str], str] = {}  # (executable, PATH) -> where shutil.which found it


def _describe_spawn_error(
    exc: OSError, argv: list[str], shell: bool, cwd: str | Path | None
) -> tuple[int, str]:
    target = "/bin/sh" if shell else argv[0]
    if cwd is not None and exc.filename is not None and os.fspath(exc.filename) == os.fspath(cwd):
        return (
            127,
            f"working directory {str(cwd)!r} cannot be entered ({exc.strerror}): fix the command's cwd",
        )
    code = 126 if isinstance(exc, PermissionError) else 127
    return code, f"cannot execute {target!r} ({exc.strerror or exc}): check that it exists and is executable"


def _write_log(log_path: str | Path | None, message: str) -> None:
    """A command that could not start still leaves its log file, saying why."""
    if log_path is not None:
        try:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            Path(log_path).write_text(f"grd: {message}\n", encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write the log file %s: %s", log_path, exc)


def _not_started(
    log_path: str | None,
    *,
    timed_out: bool = False,
    cancelled: bool = False,
    returncode: int | None = None,
    spawn_error: str | None = None,
) -> CommandOutcome:
    return CommandOutcome(
        returncode=returncode,
        timed_out=timed_out,
        cancelled=cancelled,
        elapsed_s=0.0,
        term_sent_s=None,
        kill_sent_s=None,
        survivors=0,
        stdout_tail="",
        stderr_tail=spawn_error or "",
        log_path=log_path,
        containment="none",
        spawn_error=spawn_error,
    )
