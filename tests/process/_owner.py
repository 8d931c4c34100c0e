"""A stand-in for grd in the supervision tests: ``GRD_TEST_OWNER_SPEC=JSON python _owner.py`` runs one
command through ``run_command`` (or guards a process), prints the outcome as JSON, and lets the test kill it.

SPEC: {"run": argv, "grace": s, "exclusive": key|null, "deadline_in": s|null, "guard": argv|null,
"warn_before": s|null (SIGUSR1 to the tree that long before the deadline)}. (The spec
travels in the environment, so this process's command line carries no test tree's marker.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grd_blocks.process import DeadlineWarning, guard_process, run_command


def main() -> None:
    spec = json.loads(os.environ["GRD_TEST_OWNER_SPEC"])
    if spec.get("guard"):
        proc = subprocess.Popen(spec["guard"])
        guard_process(proc.pid, grace_s=float(spec.get("grace", 1.0)))
        print(json.dumps({"guarded": proc.pid}), flush=True)
        time.sleep(3600)
    deadline = time.monotonic() + spec["deadline_in"] if spec.get("deadline_in") else float("inf")
    warn = DeadlineWarning(signal.SIGUSR1, float(spec["warn_before"])) if spec.get("warn_before") else None
    outcome = run_command(spec["run"], grace_s=float(spec.get("grace", 1.0)), exclusive=spec.get("exclusive"),
                          deadline=deadline, warn=warn)
    print(json.dumps(dataclasses.asdict(outcome)), flush=True)


if __name__ == "__main__":
    main()
