"""A process tree for the kill tests: ``python tree_child.py PID_DIR KIND...``.

Every process writes ``PID_DIR/<role>.pid``; once all exist the main process writes ``PID_DIR/ready`` and
blocks (or exits 0 with ``exit``). KINDs: ``child`` (a child with a grandchild), ``setsid`` (a child in its
own session), ``daemon`` (double fork + setsid, the intermediate exits), ``scrubbed`` (a daemon that also
execs ``sleep`` with an empty environment), ``ignore_term`` (every member ignores SIGTERM), ``exit`` (main
exits once ready).
"""

from __future__ import annotations

import os
import signal
import sys
import time

PID_DIR = sys.argv[1]
KINDS = sys.argv[2:]


def write(role: str) -> None:
    tmp = os.path.join(PID_DIR, f".{role}.tmp")
    with open(tmp, "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(tmp, os.path.join(PID_DIR, f"{role}.pid"))


def block() -> None:
    while True:
        signal.pause()


def fork_member(role: str, *, setsid: bool = False) -> None:
    if os.fork() == 0:
        try:
            if setsid:
                os.setsid()
            write(role)
            block()
        finally:
            os._exit(0)


def main() -> None:
    if "ignore_term" in KINDS:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by every member
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
        elif kind in ("daemon", "scrubbed"):
            middle = os.fork()
            if middle == 0:
                try:
                    os.setsid()
                    if kind == "daemon":
                        fork_member(f"daemon{i}")
                    elif os.fork() == 0:
                        write(f"scrubbed{i}")
                        os.execve("/bin/sleep", ["sleep", "3600"], {})  # no token, no session, no parent
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
