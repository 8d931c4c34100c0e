"""When grd itself dies, or the processes that supervise for it die, nothing it started keeps running; a
second start of the same command stops the first copy before it runs; a warning signal reaches the whole
tree before its deadline. Outcomes are counted by an independent /proc scan for each tree's marker."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from grd_blocks.process import DeadlineWarning, run_command
from grd_blocks.process.keepers import SUPERVISOR_LOG_ENV
from tests.process.helpers import GateClock, marked, running, tree_argv, wait_for

OWNER = str(Path(__file__).with_name("_owner.py"))
SLACK_S = 15.0  # added to every bound below: a loaded 2-core host schedules late, never early


def _owner(spec: dict[str, object]) -> subprocess.Popen[str]:
    """A stand-in grd; the spec goes through the environment, so its command line carries no tree's marker."""
    env = {**os.environ, "GRD_TEST_OWNER_SPEC": json.dumps(spec)}
    return subprocess.Popen([sys.executable, OWNER], stdout=subprocess.PIPE, text=True, env=env)


def _guardian_of(owner_pid: int) -> list[int]:
    """The guardian of ``owner_pid``, found by its command line (its keepers are forks of it with the same
    command line: the guardian is the one whose parent is not one of them)."""
    family = {pid for pid in marked("supervisor.guardian import main") if _last_arg(pid) == str(owner_pid)}
    return [pid for pid in family if _parent(pid) not in family]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _last_arg(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")[-1].decode()
    except OSError:
        return ""


def _keeper_of(pid_dir: Path) -> int:
    """The keeper: the parent of the tree's member whose own parent carries no marker."""
    members = set(marked(str(pid_dir)))
    for pid in members:
        parent = _parent(pid)
        if parent not in members:
            return parent
    raise AssertionError(f"no member of {pid_dir} found")


def test_a_sigkilled_grd_leaves_nothing_running_and_its_tree_got_sigterm_first(
    containment: str, pid_dir: Path
) -> None:
    owner = _owner({"run": tree_argv(pid_dir, "save_on_term", "child", "daemon", "setsid"), "grace": 3.0})
    try:
        assert wait_for((pid_dir / "ready").exists)
        owner_pid = owner.pid
        assert _guardian_of(owner_pid)
    finally:
        owner.kill()
        owner.wait()
    assert wait_for(lambda: marked(str(pid_dir)) == [], 3.0 + SLACK_S)
    assert (pid_dir / "main.term").exists() and (pid_dir / "daemon2.term").exists()  # a chance to save
    assert wait_for(lambda: _guardian_of(owner_pid) == [], SLACK_S)


def test_a_stopped_grd_still_has_its_commands_deadline_kept_by_the_keeper(
    containment: str, pid_dir: Path
) -> None:
    """grd stopped by SIGSTOP (Ctrl-Z in a terminal) at its command's deadline used to let the command run on
    until grd was resumed (SIGTERM at 16.1 s on a 4 s budget). Now the keeper runs the ladder itself a margin
    past the deadline while grd is still stopped; once resumed, grd reports who acted: timed out,
    ``stopped_by`` "keeper", SIGTERM first, no survivor."""
    owner = _owner({"run": tree_argv(pid_dir, "save_on_term", "child", "setsid"), "grace": 1.0,
                    "deadline_in": 8.0})
    try:
        assert wait_for((pid_dir / "ready").exists)
        os.kill(owner.pid, signal.SIGSTOP)
        assert wait_for(lambda: marked(str(pid_dir)) == [], 8.0 + 1.0 + 1.0 + SLACK_S), "the deadline passed"
        state = Path(f"/proc/{owner.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state == "T", "grd was resumed: the tree's end proves nothing about the keeper"
    finally:
        os.kill(owner.pid, signal.SIGCONT)
    out, _ = owner.communicate(timeout=60)
    outcome = json.loads(out)
    assert outcome["timed_out"] and outcome["stopped_by"] == "keeper", outcome
    assert outcome["term_sent_s"] is not None and outcome["survivors"] == 0, outcome
    assert (pid_dir / "main.term").exists(), "the tree got no SIGTERM before it was stopped"


def test_a_deadline_warning_before_grd_stops_does_not_disarm_the_keepers_backstop(
    containment: str, pid_dir: Path
) -> None:
    """grd sends its warning signal (USR1, 3 s before the deadline), then is stopped: the warning is not the
    ladder, so the keeper still runs the ladder itself past the deadline."""
    owner = _owner({"run": tree_argv(pid_dir, "save_on_term", "note_usr1", "child"), "grace": 1.0,
                    "deadline_in": 8.0, "warn_before": 3.0})
    try:
        assert wait_for((pid_dir / "ready").exists)
        assert wait_for((pid_dir / "main.usr1").exists, 8.0 + SLACK_S), "no warning came"
        os.kill(owner.pid, signal.SIGSTOP)
        assert wait_for(lambda: marked(str(pid_dir)) == [], 3.0 + 1.0 + 1.0 + SLACK_S), "the deadline passed"
    finally:
        os.kill(owner.pid, signal.SIGCONT)
    out, _ = owner.communicate(timeout=60)
    outcome = json.loads(out)
    assert outcome["stopped_by"] == "keeper" and outcome["warn_sent_s"] is not None, outcome


def test_a_sigkilled_grd_whose_tree_ignores_sigterm_leaves_nothing_after_the_grace(
    containment: str, pid_dir: Path
) -> None:
    owner = _owner({"run": tree_argv(pid_dir, "ignore_term", "child", "cgroup_new"), "grace": 0.5})
    try:
        assert wait_for((pid_dir / "ready").exists)
    finally:
        owner.kill()
        owner.wait()
    assert wait_for(lambda: marked(str(pid_dir)) == [], 0.5 + SLACK_S)


def test_grd_sigkilled_at_random_moments_of_a_running_command_leaves_no_survivor(tmp_path: Path) -> None:
    """50 trials: grd dies while its command starts, builds its tree or runs; every tree is gone once its
    grace has passed (counted by marker after each trial)."""
    rng = random.Random(18)
    survivors: dict[int, list[int]] = {}
    for trial in range(50):
        pid_dir = tmp_path / f"trial{trial}"
        pid_dir.mkdir()
        owner = _owner({"run": tree_argv(pid_dir, "save_on_term", "daemon", "child", "setsid"), "grace": 1.0})
        try:
            wait_for((pid_dir / "main.pid").exists)  # the command runs (its tree may still be forming)
            time.sleep(rng.uniform(0.0, 0.3))  # the random moment of the kill: the variable under test
        finally:
            owner.kill()
            owner.wait()
        if not wait_for(lambda d=pid_dir: marked(str(d)) == [], 1.0 + SLACK_S):  # type: ignore[misc]
            survivors[trial] = marked(str(pid_dir))
            for pid in survivors[trial]:
                os.kill(pid, signal.SIGKILL)
    assert survivors == {}


def test_a_sigkilled_keeper_takes_its_whole_tree_with_it(containment: str, pid_dir: Path) -> None:
    box: dict[str, object] = {}

    def run() -> None:
        box["outcome"] = run_command(tree_argv(pid_dir, "child", "daemon", "setsid"), grace_s=0.2)

    worker = threading.Thread(target=run)
    worker.start()
    assert wait_for((pid_dir / "ready").exists)
    keeper = _keeper_of(pid_dir)
    keeper_cgroup = _cgroup_of(keeper)
    os.kill(keeper, signal.SIGKILL)
    worker.join(SLACK_S)
    assert not worker.is_alive()
    outcome = box["outcome"]
    assert outcome.returncode is None and outcome.survivors == 0  # type: ignore[attr-defined]
    assert wait_for(lambda: marked(str(pid_dir)) == [], SLACK_S)
    if keeper_cgroup != _cgroup_of(os.getpid()):  # the modes with a cgroup per keeper: it is removed too
        assert wait_for(lambda: not keeper_cgroup.exists(), SLACK_S), f"{keeper_cgroup} was left behind"


@pytest.mark.parametrize("mode", ["namespace", "cgroup"])
def test_a_new_guardian_never_puts_a_keeper_in_a_cgroup_an_earlier_one_left(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cgroup an earlier guardian of this process could not remove yet has a name the next guardian would
    give again; that keeper gets a fresh cgroup of its own, never the leftover (nor none at all)."""
    from grd_blocks.process import keepers
    from tests.process.helpers import mode_problem

    problem = mode_problem(mode)
    if problem is not None:
        pytest.skip(f"this host cannot contain commands in {mode} mode: {problem}")
    monkeypatch.setenv("GRD_CONTAINMENT", mode)
    ours = _cgroup_of(os.getpid())
    keepers.shutdown()  # the next command starts a new guardian, which numbers its cgroups from 1 again
    leftovers = [ours / f"grd-{os.getpid()}-{n}" for n in range(1, 4)]
    for path in leftovers:
        path.mkdir()
    try:
        outcome = run_command("grep '^0::' /proc/self/cgroup | cut -d: -f3")
        assert outcome.returncode == 0
        where = _cgroup_mount() / outcome.stdout_tail.strip().lstrip("/")
        assert where.parent == ours and where not in leftovers, where
    finally:
        keepers.shutdown()
        for path in leftovers:
            path.rmdir()


def _cgroup_mount() -> Path:
    from grd_blocks.process.cgroup import cgroup2_mount

    mount = cgroup2_mount()
    assert mount is not None
    return mount


def _cgroup_of(pid: int) -> Path:
    """The cgroup2 directory ``pid`` is in, read from /proc (not from grd)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return _cgroup_mount() / line[3:].lstrip("/")
    raise AssertionError(f"pid {pid} is in no cgroup2 group")


def test_a_sigkilled_guardian_still_stops_every_tree(containment: str, pid_dir: Path) -> None:
    owner = _owner({"run": tree_argv(pid_dir, "save_on_term", "child", "setsid"), "grace": 2.0})
    try:
        assert wait_for((pid_dir / "ready").exists)
        guardians = _guardian_of(owner.pid)
        assert len(guardians) == 1
        os.kill(guardians[0], signal.SIGKILL)
        assert wait_for(lambda: marked(str(pid_dir)) == [], 2.0 + SLACK_S)
        assert (pid_dir / "main.term").exists()  # the keeper stopped it gracefully
        assert owner.stdout is not None
        outcome = json.loads(owner.stdout.readline())
        assert outcome["survivors"] == 0
    finally:
        owner.kill()
        owner.wait()


def test_a_guarded_process_does_not_outlive_its_owner(tmp_path: Path) -> None:
    marker = str(tmp_path / "guarded-server")
    owner = _owner({"guard": [sys.executable, "-c", "import time; time.sleep(3600)", marker], "grace": 1.0})
    try:
        assert owner.stdout is not None
        guarded = json.loads(owner.stdout.readline())["guarded"]
        assert running(guarded)
    finally:
        owner.kill()
        owner.wait()
    assert wait_for(lambda: marked(marker) == [], 1.0 + SLACK_S)


def test_a_second_start_of_the_same_command_stops_the_copy_still_running(pid_dir: Path) -> None:
    key = f"test-{uuid.uuid4().hex}/phase.command"
    owner = _owner({"run": tree_argv(pid_dir, "save_on_term", "child"), "exclusive": key, "grace": 3.0})
    try:
        assert wait_for((pid_dir / "ready").exists)
        outcome = run_command(["true"], exclusive=key)
        assert outcome.returncode == 0
        assert outcome.note is not None and "stopped an earlier copy" in outcome.note
        assert marked(str(pid_dir)) == [] and (pid_dir / "main.term").exists()
        assert owner.stdout is not None
        first = json.loads(owner.stdout.readline())
        assert first["cancelled"] and "newer start" in first["note"]
    finally:
        owner.kill()
        owner.wait()


def test_the_next_attempt_of_a_command_that_ended_finds_its_lock_free(
    containment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command's keeper lets go of its lock once the tree is gone, before it reports that: the lock is free
    the moment ``run_command`` returns (an independent ``flock`` says so), and a retry right away stops
    nothing and says nothing (it used to find the lock still held by the reused keeper and stop it)."""
    monkeypatch.setenv("GRD_RUNTIME_DIR", str(tmp_path))
    key = f"test-{uuid.uuid4().hex}/phase.command"
    lock = tmp_path / f"{key}.lock"
    for attempt in range(3):
        outcome = run_command(["sh", "-c", "exit 1"] if attempt < 2 else ["true"], exclusive=key)
        assert outcome.note is None, f"attempt {attempt + 1}: {outcome.note}"
        assert outcome.returncode == (1 if attempt < 2 else 0)
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError while a keeper holds it
        finally:
            os.close(fd)


def test_a_restart_after_grd_died_never_runs_two_copies_at_once(tmp_path: Path) -> None:
    """The first copy saves for a second after SIGTERM (its grd was SIGKILLed); the second start must wait
    for it. Each copy holds a lock of its own on a shared file while it runs: an overlap would be seen."""
    key = f"test-{uuid.uuid4().hex}/phase.train"
    shared, overlaps = tmp_path / "shared.lock", tmp_path / "overlaps"
    copy = (
        "import fcntl, signal, sys, time, pathlib\n"
        f"f = open({str(shared)!r}, 'w')\n"
        "try:\n"
        "    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n"
        f"    pathlib.Path({str(overlaps)!r}).write_text('overlap'); sys.exit(3)\n"
        "def save(*_):\n"
        "    time.sleep(1.0); sys.exit(0)  # a checkpoint being written\n"
        "signal.signal(signal.SIGTERM, save)\n"
        "print('running', flush=True)\n"
        "time.sleep(3600)\n"
    )
    ready = tmp_path / "ready"
    owner = _owner({"run": ["/bin/sh", "-c", f'touch {ready}; exec "$0" -c "$1"', sys.executable, copy],
                    "exclusive": key, "grace": 5.0})
    try:
        assert wait_for(ready.exists)
    finally:
        owner.kill()
        owner.wait()
    second = run_command([sys.executable, "-c", copy.replace("time.sleep(3600)", "")], exclusive=key)
    assert second.returncode == 0 and not overlaps.exists()


def test_the_warning_signal_reaches_every_member_before_the_deadline(containment: str, pid_dir: Path) -> None:
    ready = pid_dir / "ready"
    before_s = 1.0

    class WarnClock(GateClock):
        """Real time until the tree is up, then ``before_s`` - 1 ms short of the deadline."""

        def __call__(self) -> float:
            now = time.monotonic()
            if not self.jump and (now > self.give_up or self.ready()):
                self.jump = self.deadline - now - before_s + 0.001
            return now + self.jump

    clock = WarnClock(ready)
    outcome = run_command(
        tree_argv(pid_dir, "note_usr1", "child", "daemon"),
        deadline=clock.deadline,
        clock=clock,
        grace_s=0.2,
        warn=DeadlineWarning(signal.SIGUSR1, before_s),
    )
    assert outcome.timed_out and outcome.warn_sent_s is not None and outcome.term_sent_s is not None
    assert outcome.warn_sent_s < outcome.term_sent_s
    assert sorted(p.stem for p in pid_dir.glob("*.usr1")) == ["child1", "daemon2", "grandchild1", "main"]


def _use(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.process.helpers import mode_problem

    problem = mode_problem(mode)
    if problem is not None:
        pytest.skip(f"this host cannot contain commands in {mode} mode: {problem}")
    monkeypatch.setenv("GRD_CONTAINMENT", mode)


def test_a_namespaced_command_sees_only_its_own_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    _use("namespace", monkeypatch)
    outcome = run_command("echo $$ $PPID $(readlink /proc/$$/ns/pid); ls /proc | grep -c '^[0-9]'")
    pid, ppid, namespace, visible = outcome.stdout_tail.split()
    # its parent is the namespace's init (the keeper), it sees only the keeper, sh, ls and grep, and its pid
    # namespace is not the test's; its own pid says nothing more (a reused keeper's namespace numbered every
    # command it ran before: 132 once in CI)
    assert int(ppid) == 1 and int(pid) >= 2 and int(visible) <= 4
    assert namespace.startswith("pid:[") and namespace != os.readlink("/proc/self/ns/pid")


def test_the_command_gets_exactly_the_environment_it_was_given(containment: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "A": "x y", "Q": "a'b\nc", "PWD": "/nowhere", "EMPTY": ""}
    env["BASH_FUNC_f%%"] = "() { echo not a shell identifier; }"
    outcome = run_command(["/usr/bin/env", "-0"], env=env, use_pty=False)
    got = dict(item.split("=", 1) for item in outcome.stdout_tail.split("\0") if item)
    assert got == {**env, "PYTHONUNBUFFERED": "1"}


def test_the_supervisors_report_their_own_errors_to_the_debug_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRD_SUPERVISOR_LOG is where a guardian started now writes its stderr; it starts empty (no errors)."""
    debug = tmp_path / "supervisor.log"
    owner = subprocess.run(
        [sys.executable, OWNER],
        env={**os.environ, SUPERVISOR_LOG_ENV: str(debug), "GRD_TEST_OWNER_SPEC": '{"run": ["true"]}'},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(owner.stdout)["returncode"] == 0
    assert debug.exists() and debug.read_text() == ""


def test_a_command_that_stops_its_keeper_is_still_killed_at_its_deadline(
    containment: str, pid_dir: Path
) -> None:
    """In the subreaper modes a hostile command can SIGSTOP its keeper (its parent). grd resumes (SIGCONT) its
    keeper before each step of the ladder, so the keeper still runs it and reports the command's exit status
    (a stopped keeper used to delay SIGTERM by 2 s and SIGKILL by 4 s, until grd killed the tree itself, with
    no exit status). (In namespace mode the keeper is the namespace's init, which no member can stop.)"""
    clock = GateClock(pid_dir / "ready")
    argv = ["/bin/sh", "-c", 'kill -STOP $PPID; exec "$@"', "sh", *tree_argv(pid_dir, "child", "setsid")]
    outcome = run_command(argv, deadline=clock.deadline, clock=clock, grace_s=0.2)
    assert outcome.timed_out and outcome.survivors == 0
    assert outcome.returncode is not None, "the keeper never answered: grd killed the tree without it"
    assert marked(str(pid_dir)) == []
