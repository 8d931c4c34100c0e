"""A process tree for the kill tests: ``python tree_child.py PID_DIR KIND...``.

Every process writes ``PID_DIR/<role>.pid`` (its pid as it sees it: inside a PID namespace that is not the
host's) and carries PID_DIR in its command line, the marker the tests' independent /proc scan looks for. Once
all exist the main process writes ``PID_DIR/ready`` and blocks (or exits 0 with ``exit``). KINDs: ``child`` (a
child with a grandchild), ``setsid`` (a child in its own session), ``daemon`` (double fork + setsid, the
intermediate exits), ``scrubbed`` (a daemon that also execs a fresh interpreter with an empty environment),
``cgroup_root`` (a child that moves itself to the cgroup2 root, as root can), ``cgroup_new`` (a child that
makes a cgroup of its own beside the root, with a name no other test uses, recorded in
``PID_DIR/escaped-cgroups``, and moves into it), ``pidns`` (a child in a PID namespace of its
own, made with ``unshare``), ``ignore_term`` (every member ignores SIGTERM), ``save_on_term`` (every member
writes ``<role>.term`` on SIGTERM and exits, as a checkpointing job would), ``note_usr1`` (every member writes
``<role>.usr1`` when SIGUSR1 arrives and carries on), ``exit`` (main exits once ready).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

PID_DIR = sys.argv[1]
KINDS = sys.argv[2:]
_BLOCK = "import signal\nwhile True: signal.pause()"
ROLE = "main"
ESCAPED_CGROUPS = "escaped-cgroups"  # the cgroups ``cgroup_new`` members made, one path per line (helpers.py)


def _mark(suffix: str) -> None:
    with open(os.path.join(PID_DIR, f"{ROLE}.{suffix}"), "w") as handle:
        handle.write(str(os.getpid()))


def _on_term(_signum: int, _frame: object) -> None:
    _mark("term")
    os._exit(0)


def _on_usr1(_signum: int, _frame: object) -> None:
    _mark("usr1")


def write(role: str) -> None:
    global ROLE
    ROLE = role
    tmp = os.path.join(PID_DIR, f".{role}.tmp")
    with open(tmp, "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(tmp, os.path.join(PID_DIR, f"{role}.pid"))


def block() -> None:
    while True:
        signal.pause()


def cgroup2_root() -> str:
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    raise SystemExit("no cgroup2 mount")


def fork_member(role: str, *, setsid: bool = False, cgroup: str | None = None) -> None:
    if os.fork() == 0:
        try:
            if setsid:
                os.setsid()
            if cgroup is not None:
                os.makedirs(cgroup, exist_ok=True)
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
                    procs.write("0")
            write(role)
            block()
        finally:
            os._exit(0)


def main() -> None:
    if "ignore_term" in KINDS:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by every member
    if "save_on_term" in KINDS:
        signal.signal(signal.SIGTERM, _on_term)  # forked members keep the handler
    if "note_usr1" in KINDS:
        signal.signal(signal.SIGUSR1, _on_usr1)
    expected = ["main"]
    for i, kind in enumerate(KINDS):
        if kind == "child":
            if os.fork() == 0:
                try:
                    fork_member(f"grandchild{i}")
                    write(f"child{i}")
                    block()
                finally:
                    os._exit(0)
            expected += [f"child{i}", f"grandchild{i}"]
        elif kind == "setsid":
            fork_member(f"setsid{i}", setsid=True)
            expected.append(f"setsid{i}")
        elif kind in ("cgroup_root", "cgroup_new"):
            root = cgroup2_root()
            own = os.path.join(root, f"grd-test-escape-{uuid.uuid4().hex[:12]}-{i}")
            where = root if kind == "cgroup_root" else own
            if kind == "cgroup_new":
                with open(os.path.join(PID_DIR, ESCAPED_CGROUPS), "a") as made:
                    made.write(own + "\n")  # the pid_dir fixture removes exactly these
            fork_member(f"{kind}{i}", setsid=True, cgroup=where)
            expected.append(f"{kind}{i}")
        elif kind == "pidns":
            code = f"import os; open(os.path.join({PID_DIR!r}, 'pidns{i}.pid'), 'w').write('1')\n{_BLOCK}"
            subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-c", code, PID_DIR])
            expected.append(f"pidns{i}")
        elif kind in ("daemon", "scrubbed"):
            middle = os.fork()
            if middle == 0:
                try:
                    os.setsid()
                    if kind == "daemon":
                        fork_member(f"daemon{i}")
                    elif os.fork() == 0:
                        write(f"scrubbed{i}")
                        # no environment, no session, no parent: only the marker in its argv is left
                        os.execve(sys.executable, [sys.executable, "-c", _BLOCK, PID_DIR], {})
                finally:
                    os._exit(0)
            os.waitpid(middle, 0)
            expected.append(f"{kind}{i}")
    write("main")
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if all(os.path.exists(os.path.join(PID_DIR, f"{role}.pid")) for role in expected):
            break
        time.sleep(0.002)
    with open(os.path.join(PID_DIR, "ready"), "w") as handle:
        handle.write(" ".join(expected))
    if "exit" in KINDS:
        sys.exit(0)
    block()


if __name__ == "__main__":
    main()
