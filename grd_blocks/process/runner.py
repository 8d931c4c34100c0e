"""``run_command``: start a command under a keeper, wait for it, warn it, stop all of it.

Invariant: when ``run_command`` returns (or raises, e.g. on KeyboardInterrupt), no process of the command's
tree is running: on the deadline or ``cancel`` the kill ladder runs (SIGTERM, ``grace_s``, SIGKILL); after a
normal exit any leftover descendant (a daemonized grandchild) is stopped by the same ladder. If grd itself
dies, the keeper runs that ladder on its own (see ``supervisor``); if grd is alive but misses the deadline
(stopped by SIGSTOP or Ctrl-Z, hung, starved), the keeper runs it ``BACKSTOP_MARGIN_S`` later (with the real
monotonic clock) and the outcome says ``stopped_by="keeper"`` with the keeper's times. A command whose
deadline has already passed, or whose cancel event is already set, is not started. Spawn failures (missing
executable or cwd) come back as an outcome with returncode 127 (126: not executable); ``ProcessError`` is
raised only for invalid arguments or when no keeper can be started. With ``warn``, its signal goes to the
whole tree ``before_s`` seconds before the deadline (once). With ``exclusive``, a copy still running under
the same key (an earlier attempt whose grd died) is stopped before this one starts.

The command's start is one message to a keeper made ahead (no fork, namespace or cgroup move on this path).
Output is read by the waiting thread itself for the first ``INLINE_S`` (a short command needs no reader
thread), then handed to the reader thread, which also serves the kill ladder's grace period.
"""

from __future__ import annotations

import logging
import math
import os
import select
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from grd_blocks.errors import ProcessError
from grd_blocks.process import exclusive as exclusive_lock
from grd_blocks.process import keepers
from grd_blocks.process.keepers import Keeper
from grd_blocks.process.ladder import KILL_WAIT_S, LadderResult, stop_tree
from grd_blocks.process.outcome import CommandOutcome
from grd_blocks.process.output import OnLine, OutputCapture

__all__ = ["CANCEL_TICK_S", "DRAIN_S", "INLINE_S", "CancelFlag", "DeadlineWarning", "run_command"]

log = logging.getLogger("grd.process")

CANCEL_TICK_S = 0.02  # how often a cancel event is checked while the command runs


class CancelFlag(Protocol):
    """What stops a command early: a ``threading.Event``, or a budget's ``cancel_flag()``."""

    def is_set(self) -> bool: ...
DRAIN_S = 1.0  # how long output is still read after the tree is gone, if a stray holder keeps it open
_MAX_TICK_S = 0.25  # re-read the caller's clock at least this often (it need not be real time)
INLINE_S = 0.05  # output is read by the waiting thread this long, then by a reader thread
EXITING_S = 0.05  # after the main process exits, members already on their way out are not leftovers
BACKSTOP_MARGIN_S = 1.0  # the keeper runs the ladder itself this long after a deadline grd has not acted on


@dataclass(frozen=True)
class DeadlineWarning:
    """Send ``signum`` to the whole tree ``before_s`` seconds before its deadline (SLURM's ``--signal``)."""

    signum: int
    before_s: float


def run_command(
    run: str | Sequence[str],
    *,
    deadline: float = math.inf,
    grace_s: float = 5.0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    log_path: str | Path | None = None,
    on_line: OnLine | None = None,
    cancel: CancelFlag | None = None,
    tail_chars: int = 4000,
    clock: Callable[[], float] = time.monotonic,
    use_pty: bool = True,
    warn: DeadlineWarning | None = None,
    exclusive: str | None = None,
) -> CommandOutcome:
    """Run ``run`` (a string runs under ``/bin/sh -c``, a list is executed directly) until it exits,
    ``deadline`` (absolute, on ``clock``) passes or ``cancel`` is set; see the module docstring for the
    guarantees.

    ``env`` is the child's full environment (``None``: inherit); ``PYTHONUNBUFFERED=1`` is added unless it
    sets ``PYTHONUNBUFFERED``. stdout is a PTY (``use_pty=False``: a pipe) so C stdio and Python flush per
    line. ``exclusive`` is a key (``run_key/phase.command``) that at most one running copy may hold here.
    """
    argv, shell = _normalize(run)
    if not grace_s >= 0 or math.isinf(grace_s):
        raise ProcessError(f"grace_s={grace_s!r} is invalid: it must be a finite number >= 0; use e.g. 5.0")
    if tail_chars < 0:
        raise ProcessError(f"tail_chars={tail_chars!r} is invalid: it must be >= 0")
    if warn is not None and not (warn.before_s > 0 and math.isfinite(warn.before_s)):
        raise ProcessError(f"warn.before_s={warn.before_s!r} is invalid: it must be a finite number > 0")
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
    _check_encodable(argv, child_env)
    try:
        where = os.path.abspath(cwd) if cwd is not None else os.getcwd()
    except OSError as exc:
        raise ProcessError(f"the current directory is gone ({exc}): pass cwd") from exc
    exe, problem = _resolve(argv, shell, child_env, where if cwd is not None else None)
    if problem is not None:
        log.warning("%s: %s", label, problem[1])
        _write_log(log_path, problem[1])
        return _not_started(log_str, returncode=problem[0], spawn_error=problem[1])

    claim = exclusive_lock.claim(exclusive) if exclusive is not None else None
    if claim is not None and claim.stopped:
        log.warning("%s: %s", label, claim.stopped)
    try:
        keeper = keepers.acquire()
        try:
            output = OutputCapture(use_pty=use_pty, log_path=log_path, on_line=on_line, tail_chars=tail_chars)
        except OSError as exc:
            keeper.discard()
            raise ProcessError(
                f"cannot open the log file {log_str!r} ({exc}): pass a writable log_path"
            ) from exc
        try:
            keeper.start(
                exe,
                ["/bin/sh", "-c", argv[0]] if shell else argv,
                child_env,
                cwd=where,
                grace_s=grace_s,
                stdout=output.child_stdout,
                stderr=output.child_stderr,
                hold=[claim.fd] if claim is not None else [],
                backstop_at=_backstop_at(deadline, clock),
            )
        except ProcessError:
            output.abort()
            keeper.discard()
            raise
        if claim is not None:
            claim.record(keeper_pid=keeper.pid, grace_s=grace_s, label=label)
    finally:
        if claim is not None:
            claim.close()
    output.release_child_ends()
    supervised = _Supervised(keeper, output, label, grace_s, clock, started, warn)
    outcome = supervised.run(deadline, cancel, log_str)
    if claim is not None and claim.stopped:
        outcome = outcome.with_note(claim.stopped)
    return outcome


def _backstop_at(deadline: float, clock: Callable[[], float]) -> float | None:
    """When the keeper runs the ladder itself if grd has not (CLOCK_MONOTONIC): only for a finite deadline on
    the real monotonic clock (a caller's own clock means nothing to the keeper)."""
    if clock is not time.monotonic or not math.isfinite(deadline):
        return None
    return deadline + BACKSTOP_MARGIN_S


class _Supervised:
    """One started command: wait for it, warn it, run the ladder, collect the outcome."""

    def __init__(
        self,
        keeper: Keeper,
        output: OutputCapture,
        label: str,
        grace_s: float,
        clock: Callable[[], float],
        started: float,
        warn: DeadlineWarning | None,
    ) -> None:
        self.keeper = keeper
        self.output = output
        self.label = label
        self.grace_s = grace_s
        self.clock = clock
        self.started = started
        self.warn = warn
        self.warn_sent_s: float | None = None

    def run(self, deadline: float, cancel: CancelFlag | None, log_str: str | None) -> CommandOutcome:
        keeper = self.keeper
        ladder = LadderResult(term_sent_s=None, kill_sent_s=None, survivors=0)
        reason: str | None = None
        leftover = 0
        stopped = False
        try:
            reason = self._wait(deadline, cancel)
            if keeper.spawn_error is not None:
                stopped = True
                return self._spawn_failed(log_str)
            if reason is None:
                if keeper.lost and not keeper.exited:
                    log.error(
                        "%s: grd's keeper process (pid %s) died while the command ran; killing what is left",
                        self.label,
                        keeper.pid,
                    )
                    keeper.force_kill()
                    keeper.wait_gone(KILL_WAIT_S)
                    left = len(keeper.live())
                    ladder = LadderResult(term_sent_s=None, kill_sent_s=self._now(), survivors=left)
                elif not keeper.empty and not keeper.wait(lambda: keeper.empty, EXITING_S):
                    leftover = keeper.left
                    log.warning(
                        "%s: exited with %s but left %d process(es) running; stopping them",
                        self.label,
                        keeper.returncode,
                        leftover,
                    )
                    self.output.hand_over()
                    ladder = self._ladder("leftover processes")
            else:
                self.output.hand_over()  # the ladder may wait out the grace period while the command prints
                why = "cancelled" if reason == "cancel" else f"deadline reached after {self._now():.3f}s"
                ladder = self._ladder(why)
            stopped = True
        finally:
            if not stopped:  # interrupted (KeyboardInterrupt, a cancellation exception): kill, re-raise
                keeper.kill()
                keeper.wait_empty(KILL_WAIT_S)
            if not keeper.exited and keeper.spawn_error is None:
                keeper.wait(lambda: keeper.exited, KILL_WAIT_S)
            stopped_by = "grd" if reason == "deadline" else None
            if stopped and keeper.backstop and reason in (None, "deadline"):  # grd missed its deadline; its
                ladder, reason, stopped_by = self._backstopped(ladder), "deadline", "keeper"  # keeper did not
            returncode, pid = keeper.returncode, keeper.main_pid
            taken_over = keeper.stopping and reason is None
            keepers.give_back(keeper)  # it may serve another command from here on: read it no more
            self.output.finish(0.0 if keeper.spawn_error is not None else DRAIN_S)  # nothing ran: no wait
        return CommandOutcome(
            returncode=returncode,
            timed_out=reason == "deadline",
            cancelled=reason == "cancel" or taken_over,
            elapsed_s=self._now(),
            term_sent_s=ladder.term_sent_s,
            kill_sent_s=ladder.kill_sent_s,
            survivors=ladder.survivors,
            stdout_tail=self.output.stdout_tail,
            stderr_tail=self.output.stderr_tail,
            log_path=log_str,
            containment=keeper.kind,
            spawn_error=None,
            leftover=leftover,
            pid=pid,
            warn_sent_s=self.warn_sent_s,
            note=_TAKEN_OVER if taken_over else None,
            stopped_by=stopped_by,
        )

    def _backstopped(self, ladder: LadderResult) -> LadderResult:
        """The ladder as the keeper ran it (its steps' times; grd's for a step it took after resuming), and
        the survivors an independent scan finds; logged as a WARNING naming what grd missed."""
        term = self.keeper.backstop.get("term")
        kill = self.keeper.backstop.get("kill")
        term_s = term - self.started if term is not None else ladder.term_sent_s
        kill_s = kill - self.started if kill is not None else ladder.kill_sent_s
        survivors = ladder.survivors if ladder.term_sent_s or ladder.kill_sent_s else len(self.keeper.live())
        log.warning(
            "%s: grd did not act on the deadline in time (it was stopped, hung or starved); its keeper ran "
            "the ladder: %s, %s",
            self.label,
            "no SIGTERM" if term_s is None else f"SIGTERM at {term_s:.1f}s",
            "no SIGKILL" if kill_s is None else f"SIGKILL at {kill_s:.1f}s",
        )
        return LadderResult(term_sent_s=term_s, kill_sent_s=kill_s, survivors=survivors)

    def _now(self) -> float:
        return self.clock() - self.started

    def _ladder(self, why: str) -> LadderResult:
        return stop_tree(
            self.keeper, grace_s=self.grace_s, why=why, label=self.label, clock=self.clock,
            started=self.started,
        )

    def _spawn_failed(self, log_str: str | None) -> CommandOutcome:
        assert self.keeper.spawn_error is not None
        errno, text, cwd_failed = self.keeper.spawn_error
        code, message = _describe_spawn_error(errno, text, self.label, cwd_failed)
        log.warning("%s: %s", self.label, message)
        _write_log(log_str, message)
        return _not_started(log_str, returncode=code, spawn_error=message)

    def _wait(self, deadline: float, cancel: CancelFlag | None) -> str | None:
        """None once the main process has exited (or the command could not start, or the keeper is gone);
        else "deadline" or "cancel". Output is read in this thread for the first ``INLINE_S``, then by the
        reader thread."""
        keeper, output = self.keeper, self.output
        poller = select.poll()
        poller.register(keeper.fileno(), select.POLLIN)
        for fd in output.open_fds:
            poller.register(fd, select.POLLIN)
        inline_until = time.monotonic() + INLINE_S

        def ended() -> bool:
            return keeper.exited or keeper.spawn_error is not None or keeper.lost

        def wait_step(timeout: float) -> bool:
            nonlocal inline_until
            if inline_until and time.monotonic() >= inline_until:
                for fd in output.open_fds:
                    poller.unregister(fd)
                output.hand_over()
                inline_until = 0.0
            end = time.monotonic() + timeout
            while True:
                step = timeout
                if inline_until:
                    step = min(step, max(0.0, inline_until - time.monotonic()))
                for fd, _event in poller.poll(math.ceil(step * 1000)):
                    if fd == keeper.fileno():
                        keeper.pump()
                        if keeper.lost:
                            poller.unregister(fd)
                    else:
                        output.pump(fd, poller)
                if ended():
                    return True
                if time.monotonic() >= end or (inline_until and time.monotonic() >= inline_until):
                    return False

        tick = CANCEL_TICK_S if cancel is not None else _MAX_TICK_S
        while True:
            if cancel is not None and cancel.is_set():
                return None if wait_step(0) else "cancel"
            left = deadline - self.clock()
            if left <= 0:
                return None if wait_step(0) else "deadline"
            if self.warn is not None and self.warn_sent_s is None and left <= self.warn.before_s:
                self._send_warning(left)
            until_warn = math.inf
            if self.warn is not None and self.warn_sent_s is None:
                until_warn = left - self.warn.before_s
            if wait_step(max(0.0, min(left, tick, until_warn))):
                return None

    def _send_warning(self, left: float) -> None:
        assert self.warn is not None
        self.warn_sent_s = self._now()
        count = self.keeper.signal(self.warn.signum)
        log.info(
            "%s: sent %s to %d process(es), %.1fs before its deadline (warn.before %.1fs)",
            self.label,
            signal.Signals(self.warn.signum).name,
            count,
            left,
            self.warn.before_s,
        )


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


def _check_encodable(argv: list[str], env: Mapping[str, str]) -> None:
    """What ``execve`` cannot take is refused before anything starts: NUL bytes, unencodable strings.
    Every string is checked in one pass (a join, one encode); the one at fault is named by a second pass."""
    names = "".join(env)
    everything = "".join((*argv, names, *env.values()))
    if "\0" not in everything and "=" not in names and all(env):
        try:
            os.fsencode(everything)
            return
        except UnicodeEncodeError:
            pass
    for index, arg in enumerate(argv):
        _check_text(arg, f"argument {index} of the command")
    for name, value in env.items():
        _check_text(name, f"environment variable name {name!r}")
        _check_text(value, f"the value of environment variable {name!r}")
        if not name or "=" in name:
            raise ProcessError(f"environment variable name {name!r} is invalid: it must be non-empty, no '='")


def _check_text(text: str, what: str) -> None:
    if "\0" in text:
        raise ProcessError(f"{what} contains a NUL character, which no command can receive: remove it")
    try:
        os.fsencode(text)
    except UnicodeEncodeError as exc:
        raise ProcessError(
            f"{what} cannot be encoded for the operating system ({exc.reason} at position {exc.start}): "
            "remove or replace the character"
        ) from None


def _label(argv: list[str], shell: bool) -> str:
    text = argv[0] if shell else " ".join(argv)
    return f"command {text[:57] + '...' if len(text) > 60 else text!r}"


def _resolve(
    argv: list[str], shell: bool, env: Mapping[str, str], cwd: str | None
) -> tuple[str, tuple[int, str] | None]:
    """(the executable's path, None) or ("", (returncode, message)) if the command cannot start; checked
    before anything is created."""
    if cwd is not None and not os.path.isdir(cwd):
        return "", (
            127,
            f"working directory {cwd!r} does not exist or is not a directory: create it or fix the "
            "command's cwd",
        )
    if shell:
        return "/bin/sh", None
    exe = argv[0]
    if os.sep in exe:
        path = exe if os.path.isabs(exe) or cwd is None else os.path.join(cwd, exe)
        if not os.path.exists(path):
            return "", (
                127,
                f"executable {exe!r} does not exist: check the path (relative paths start at the cwd)",
            )
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return "", (
                126,
                f"executable {exe!r} is not an executable file: chmod +x it or run it via its interpreter",
            )
        return os.path.abspath(path), None
    search = env.get("PATH", os.defpath)
    found = _which(exe, search)
    if found is None:
        return "", (
            127,
            f"executable {exe!r} was not found on PATH ({search}): install it, activate its "
            "environment, or give its absolute path",
        )
    return os.path.abspath(found), None


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
_TAKEN_OVER = (
    "its keeper was told to stop the tree (SIGTERM): a newer start of the same command took over, "
    "or grd's guardian process died"
)


def _describe_spawn_error(errno: int, text: str, label: str, cwd_failed: bool) -> tuple[int, str]:
    if cwd_failed:
        return 127, f"the working directory cannot be entered ({text}): fix the command's cwd"
    code = 126 if errno in (13, 8) else 127  # EACCES, ENOEXEC: there but not runnable
    return code, f"{label} cannot be executed ({text}): check that it exists and is executable"


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
