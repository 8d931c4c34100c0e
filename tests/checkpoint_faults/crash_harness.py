"""Drives the pre-forked writer (``_writer.py``): one real writer process per trial, SIGKILLed at a random
moment.

Invariant: after ``kill_trial`` returns, the writer process is dead and reaped (its wait status is known), so
whatever the store holds is exactly what a crash at that moment leaves behind; ``close`` ends the zygote.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TrialProgress:
    """What a killed writer reported: where it resumed, the last save it began and the last one it
    finished."""

    ready: int | None
    last_begun: int | None
    last_done: int | None
    save_durations: tuple[float, ...] = ()

    @property
    def lowest_acceptable(self) -> int | None:
        """The newest index known committed: the last ``done``, else the one the writer resumed after."""
        if self.last_done is not None:
            return self.last_done
        if self.ready is not None and self.ready > 0:
            return self.ready - 1
        return None

    @property
    def highest_acceptable(self) -> int | None:
        """The newest index that may be committed: the save in flight when the kill landed."""
        if self.last_begun is not None:
            return self.last_begun
        return self.lowest_acceptable


def read_progress(path: Path) -> TrialProgress:
    """Parse ``ready|begin|done <index> <monotonic stamp>`` lines (a torn last line is ignored)."""
    ready = begun = done = None
    began_at: dict[int, float] = {}
    durations: list[float] = []
    for line in path.read_text().splitlines():
        words = line.split()
        if len(words) != 3:
            continue
        word, index, stamp = words[0], int(words[1]), float(words[2])
        if word == "ready":
            ready = index
        elif word == "begin":
            begun = index
            began_at[index] = stamp
        elif word == "done":
            done = index
            if index in began_at:
                durations.append(stamp - began_at[index])
    return TrialProgress(ready=ready, last_begun=begun, last_done=done, save_durations=tuple(durations))


class WriterZygote:
    """A ``python -m tests.checkpoint_faults._writer`` process that forks one writer per trial."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.checkpoint_faults._writer"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(workdir / "zygote.log").open("ab"),
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put("eof")

    def _expect(self, prefix: str, timeout_s: float) -> list[str]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"writer zygote silent for {timeout_s}s (awaiting {prefix!r})") from None
        words = line.split()
        if not words or words[0] != prefix:
            log = (self.workdir / "zygote.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"writer zygote said {line!r}, expected {prefix!r}; its log:\n{log}")
        return words[1:]

    def start(self, request: dict[str, Any]) -> int:
        """Fork a writer for ``request``; return its pid."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return int(self._expect("pid", 60)[0])

    def wait_exit(self, pid: int, timeout_s: float = 60) -> int:
        """The wait status of writer ``pid`` once the zygote has reaped it."""
        got_pid, status = self._expect("exit", timeout_s)
        assert int(got_pid) == pid, f"zygote reaped {got_pid}, expected {pid}"
        return int(status)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


class KillWindow:
    """The kill window: 1.5x the median save duration seen so far (``initial_s`` before any), stretched 1.5x
    for every consecutive trial in which no save finished (a slow first save must not hide every commit)."""

    def __init__(self, initial_s: float, *, cap_s: float = 3.0) -> None:
        self._durations: list[float] = []
        self._initial_s = initial_s
        self._cap_s = cap_s
        self._misses = 0

    def observe(self, progress: TrialProgress) -> None:
        self._durations.extend(progress.save_durations)
        del self._durations[:-50]
        self._misses = 0 if progress.save_durations else self._misses + 1

    @property
    def seconds(self) -> float:
        if self._durations:
            base = 1.5 * sorted(self._durations)[len(self._durations) // 2]
        else:
            base = self._initial_s
        return float(min(self._cap_s, base * 1.5 ** min(self._misses, 20)))


def wait_for_line(path: Path, word: str, *, pid: int, timeout_s: float = 60) -> None:
    """Poll ``path`` until a line starting with ``word`` appears (bounded), failing early if ``pid`` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and any(line.startswith(word) for line in path.read_text().splitlines()):
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise AssertionError(f"writer {pid} died before reporting {word!r}") from None
        time.sleep(0.001)  # poll interval of a bounded wait
    raise AssertionError(f"writer {pid} did not report {word!r} within {timeout_s}s")


def kill_trial(
    zygote: WriterZygote, request: dict[str, Any], rng: random.Random, window_s: float
) -> TrialProgress:
    """Start a writer; once its first save has begun, SIGKILL it at a uniform random moment in ``window_s``.

    Pick ``window_s`` a little longer than one save (see ``kill_window``) so kills land at every point of a
    commit (payload, manifest, LATEST, retention) and sometimes in the next save.
    """
    progress = Path(request["progress"])
    pid = zygote.start(request)
    wait_for_line(progress, "begin", pid=pid)
    # the random kill moment itself, not a synchronisation
    time.sleep(rng.uniform(0, window_s))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    status = zygote.wait_exit(pid)
    if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
        log = Path(request["log"]).read_text(errors="replace")[-3000:]
        raise AssertionError(f"writer {pid} ended with wait status {status}, not by SIGKILL; its log:\n{log}")
    return read_progress(progress)
