"""A keeper serves another command only when nothing of the previous one can reach it: its tree ended on its
own, and its containment is as it was made (no mount left in its namespace, not moved out of its cgroup, no
cgroup made below it, its limits untouched); a late takeover request never stops the command it serves next;
and a reused keeper contains its next tree as a fresh one would. Which keeper served a command is read from
the command's side (its cgroup, or its parent's pid in subreaper mode), survivors by an independent /proc
scan."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from grd_blocks.process import CommandOutcome, keepers, run_command, wire
from grd_blocks.process.cgroup import cgroup2_mount
from grd_blocks.process.exclusive import runtime_dir
from grd_blocks.process.supervisor.keeper import STOP_MARK, STOP_MARK_OFFSET, TAKEOVER_SIGNAL
from tests.process.helpers import (
    ESCAPED_CGROUPS,
    GateClock,
    marked,
    my_zombies,
    recorded_roles,
    tree_argv,
    wait_for,
)

SLACK_S = 15.0  # bound on a loaded 2-core host: the guardian removes a released keeper's cgroup
CGROUP_MODES = ["namespace", "cgroup"]
_IDENTITY = {False: "grep '^0::' /proc/self/cgroup | cut -d: -f3", True: "echo $PPID"}  # by "subreaper?"


def _served_by(mode: str, **kwargs: object) -> str:
    """Which keeper runs a command, as the command sees it: its cgroup (unique per keeper), or in subreaper
    mode its parent's pid; the command may first do ``before`` (a shell snippet) and must exit 0."""
    before = str(kwargs.pop("before", ":"))
    outcome = run_command(f"{before} && {_IDENTITY[mode == 'subreaper']}", **kwargs)  # type: ignore[arg-type]
    assert outcome.returncode == 0, outcome.stderr_tail
    return outcome.stdout_tail.strip()


def _cgroup_dir(relative: str) -> Path:
    mount = cgroup2_mount()
    assert mount is not None
    return mount / relative.lstrip("/")


def test_commands_run_one_after_another_reuse_one_keeper(containment: str) -> None:
    first = _served_by(containment)
    assert [_served_by(containment) for _ in range(3)] == [first] * 3


@pytest.mark.parametrize("mode", CGROUP_MODES)
def test_commands_running_at_once_never_share_a_keeper_and_released_cgroups_are_removed(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(mode, monkeypatch)
    gate = tmp_path / "seen"
    gate.mkdir()
    # each command records itself, then waits (bounded) until all three are running at the same time
    wait_all = f"mktemp -p {gate} >/dev/null; n=0; "
    wait_all += f"while [ $(ls {gate} | wc -l) -lt 3 ] && [ $n -lt 3000 ]; do n=$((n+1)); sleep 0.01; done"
    seen: list[str] = []
    threads = [
        threading.Thread(target=lambda: seen.append(_served_by(mode, before=wait_all))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(seen) == 3 and len(set(seen)) == 3 and len(list(gate.iterdir())) == 3
    keepers.shutdown()
    assert wait_for(lambda: not any(_cgroup_dir(path).exists() for path in seen), SLACK_S)


def test_a_mount_made_by_one_command_never_reaches_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In namespace mode the mount namespace is the keeper's: a keeper whose command mounted something is
    retired (and the mount goes with its namespace), never handed the next command."""
    _use("namespace", monkeypatch)
    target = tmp_path / "mnt"
    target.mkdir()
    first = _served_by("namespace", before=f"mount -t tmpfs grd-test {target} && touch {target}/left")
    second = _served_by(
        "namespace", before=f"test ! -e {target}/left && ! grep -q ' {target} ' /proc/self/mountinfo"
    )
    assert second != first
    assert not (target / "left").exists() and f" {target} " not in Path("/proc/self/mountinfo").read_text()
    assert wait_for(lambda: not _cgroup_dir(first).exists(), SLACK_S)


def test_a_keeper_whose_command_mounted_and_unmounted_something_is_retired_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its mount table reads as it was made, but it changed while the command ran (the kernel says so): a
    mount a command undid is still a change the keeper does not hand on."""
    _use("namespace", monkeypatch)
    target = tmp_path / "mnt"
    target.mkdir()
    first = _served_by("namespace", before=f"mount -t tmpfs grd-test {target} && umount {target}")
    assert _served_by("namespace") != first


@pytest.mark.parametrize("mode", CGROUP_MODES)
def test_a_command_that_moves_its_keeper_out_of_its_cgroup_never_gets_it_again(
    mode: str, monkeypatch: pytest.MonkeyPatch, pid_dir: Path
) -> None:
    """As root a command can move its keeper ($PPID; 1 inside the keeper's PID namespace) to another
    cgroup; that keeper is retired, and the next command runs in a fresh cgroup of its own."""
    _use(mode, monkeypatch)
    escape = _cgroup_dir(f"grd-test-escape-{os.getpid()}-keeper")
    escape.mkdir()
    (pid_dir / ESCAPED_CGROUPS).write_text(f"{escape}\n")  # the pid_dir fixture removes it after the test
    first = _served_by(mode, before=f"echo $PPID > {escape}/cgroup.procs")
    second = _served_by(mode)
    assert second != first and second != f"/{escape.name}"
    assert wait_for(lambda: (escape / "cgroup.procs").read_text() == "", SLACK_S)  # the keeper exited
    assert wait_for(lambda: not _cgroup_dir(first).exists(), SLACK_S)


@pytest.mark.parametrize("mode", CGROUP_MODES)
def test_a_command_that_makes_a_cgroup_below_its_own_never_hands_it_on(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(mode, monkeypatch)
    first = _served_by(
        mode, before=f'mkdir "{_cgroup_dir("/")}$(grep "^0::" /proc/self/cgroup | cut -d: -f3)/left"'
    )
    nested = _cgroup_dir(first) / "left"
    second = _served_by(mode)
    assert second != first
    assert wait_for(lambda: not nested.exists() and not _cgroup_dir(first).exists(), SLACK_S)


def test_a_command_that_changes_its_keepers_limits_never_hands_them_on(containment: str) -> None:
    """As root a command can lower its keeper's rlimits (``prlimit``); the next command never gets them."""
    keeper_pid = "1" if containment == "namespace" else "$PPID"
    first = _served_by(containment, before=f"prlimit --pid {keeper_pid} --nofile=77:77")
    second = _served_by(containment, before="test $(ulimit -n) != 77")
    assert second != first


def test_a_late_takeover_request_never_stops_the_next_command_of_a_reused_keeper(
    containment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer start of an exclusive command marks the lock and signals the keeper that held it; if that
    keeper has since moved on to another command, the request is stale (the mark is on a lock it no longer
    holds) and the command it runs now carries on."""
    monkeypatch.setenv("GRD_RUNTIME_DIR", str(tmp_path / "runtime"))
    first = _served_by(containment, exclusive="grd-test-late-takeover")
    started, gate = tmp_path / "started", tmp_path / "gate"
    script = f"import os, time\nopen({str(started)!r}, 'w').close()\n"
    script += f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)"
    result: list[CommandOutcome] = []
    runner = threading.Thread(target=lambda: result.append(run_command([sys.executable, "-c", script])))
    runner.start()
    assert wait_for(started.exists)
    keeper = _keeper_pid_of(str(started))
    assert _identity_of(keeper, containment) == first  # the command runs on the keeper the request was for
    with open(runtime_dir() / "grd-test-late-takeover.lock", "r+b") as lock:  # what a claim that lost the
        lock.seek(STOP_MARK_OFFSET)  # race with the keeper's release writes, before it signals
        lock.write(STOP_MARK)
    before = _voluntary_switches(keeper)
    os.kill(keeper, TAKEOVER_SIGNAL)
    assert wait_for(lambda: _voluntary_switches(keeper) > before + 1)  # it woke, looked, and slept again
    gate.touch()
    runner.join(60)
    (outcome,) = result
    assert outcome.returncode == 0 and not outcome.cancelled and outcome.note is None


def _keeper_pid_of(marker: str) -> int:
    """The host pid of the keeper running the one process whose command line carries ``marker``: its parent,
    found by scanning /proc, not by asking grd."""
    (pid,) = marked(marker)
    return _parent(pid)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _identity_of(keeper: int, mode: str) -> str:
    """What ``_served_by`` reports for a command of ``keeper``, read from the host's /proc."""
    if mode == "subreaper":
        return str(keeper)
    lines = Path(f"/proc/{keeper}/cgroup").read_text().splitlines()
    return next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))


def _voluntary_switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no context switch count for pid {pid}")


def test_a_reused_keeper_still_kills_every_escape_at_the_deadline(containment: str, pid_dir: Path) -> None:
    first = _served_by(containment)
    assert _served_by(containment) == first  # the keeper below is one that already served commands
    clock = GateClock(pid_dir / "ready")
    argv = _reporting(containment, pid_dir, "child", "setsid", "daemon", "ignore_term")
    outcome = run_command(argv, deadline=clock.deadline, grace_s=0.2, clock=clock)
    assert (pid_dir / "served").read_text().strip() == first
    assert outcome.timed_out and outcome.survivors == 0
    assert len(recorded_roles(pid_dir)) == 5 and marked(str(pid_dir)) == [] and my_zombies() == []


def test_a_keeper_whose_command_was_stopped_is_never_reused(containment: str, pid_dir: Path) -> None:
    clock = GateClock(pid_dir / "ready")
    argv = _reporting(containment, pid_dir, "child")
    outcome = run_command(argv, deadline=clock.deadline, grace_s=0.2, clock=clock)
    assert outcome.timed_out and marked(str(pid_dir)) == []
    stopped = (pid_dir / "served").read_text().strip()
    assert stopped not in {_served_by(containment) for _ in range(3)}


def test_a_command_costs_its_keeper_one_message_and_the_keeper_renews_itself(
    containment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grd's only message to a keeper per command is its start: the keeper says ``ready`` again by itself once
    the tree ended on its own (no ``reset`` round trip), and the next command runs on it."""
    first = _served_by(containment)
    sent: list[object] = []
    real_send = wire.send

    def counting_send(sock: object, message: dict[str, object], fds: object = ()) -> None:
        if message.get("op") not in ("keeper", "guard"):  # requests to the guardian, not to a keeper
            sent.append(message.get("op"))
        real_send(sock, message, fds)  # type: ignore[arg-type]

    monkeypatch.setattr(wire, "send", counting_send)
    assert [_served_by(containment) for _ in range(4)] == [first] * 4
    assert sent == ["run"] * 4


def test_a_command_that_could_not_start_hands_its_keeper_on(containment: str, tmp_path: Path) -> None:
    """An executable the kernel refuses (no known format: ENOEXEC in the keeper's spawn) is reported as such,
    and the keeper serves the next command."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01\x02 not a program\n")
    junk.chmod(0o755)
    first = _served_by(containment)
    outcome = run_command([str(junk)], log_path=tmp_path / "junk.log")
    assert outcome.returncode == 126 and "Exec format error" in (outcome.spawn_error or "")
    assert "Exec format error" in (tmp_path / "junk.log").read_text()  # its log says why
    assert _served_by(containment) == first


def _reporting(mode: str, pid_dir: Path, *kinds: str) -> list[str]:
    """A test tree whose shell first writes which keeper serves it (as ``_served_by``) to ``served``."""
    return [
        "/bin/sh",
        "-c",
        f'{_IDENTITY[mode == "subreaper"]} > {pid_dir}/served; exec "$@"',
        "sh",
        *tree_argv(pid_dir, *kinds),
    ]


def _use(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.process.helpers import mode_problem

    problem = mode_problem(mode)
    if problem is not None:
        pytest.skip(f"this host cannot contain commands in {mode} mode: {problem}")
    monkeypatch.setenv("GRD_CONTAINMENT", mode)
