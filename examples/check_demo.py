"""Check the demo's report says what `make demo` promises: exit 0 if it does, 1 naming the mismatch if not."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any


def _command(report: dict[str, Any], phase: str, name: str) -> dict[str, Any]:
    for p in report["phases"]:
        if p["name"] == phase:
            for c in p["commands"]:
                if c["name"] == name:
                    return dict(c)
    raise SystemExit(f"demo check: no command {phase}.{name} in the report")


def _started_epoch(command: dict[str, Any]) -> int:
    """The epoch examples/train_mlp.py says it started at ("starting at epoch N batch B ...")."""
    match = re.search(r"starting at epoch (\d+)", command.get("stdout_tail") or "")
    return int(match.group(1)) if match else -1


def check_resumed(first_path: str, path: str, code: int) -> int:
    """The resumed run skipped what completed and continued the training at a later epoch."""
    first = json.loads(Path(first_path).read_text())
    report = json.loads(Path(path).read_text())
    problems = []
    if report["run_key"] != first["run_key"]:
        problems.append(f"the resumed run has run key {report['run_key']}, expected {first['run_key']}")
    for phase, name in [("smoke", "hello"), ("smoke", "steps")]:
        if not _command(report, phase, name).get("resumed"):
            problems.append(f"{phase}.{name} completed before and should be skipped (resumed: true)")
    stopped_at = _started_epoch(_command(first, "learn", "mlp"))
    mlp = _command(report, "learn", "mlp")
    resumed_at = _started_epoch(mlp)
    if _command(first, "learn", "mlp")["status"] != "TIMEOUT" or stopped_at != 0:
        problems.append("the first run's training should start at epoch 0 and end TIMEOUT")
    if resumed_at <= 0:
        tail = mlp.get("stdout_tail")
        problems.append(f"the resumed training should start after epoch 0, it says {tail!r}")
    if problems:
        print("demo check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(
        f"demo check OK: the retry (run key {report['run_key']}) skipped the commands that had completed, "
        f"and the training resumed from its checkpoint at epoch {resumed_at} (it had started at epoch 0); "
        f"it is now {mlp['status']}. grd exit code {code}."
    )
    return 0


def main(path: str, code: int) -> int:
    report = json.loads(Path(path).read_text())
    expect = {
        ("smoke", "hello"): "COMPLETED",
        ("smoke", "steps"): "COMPLETED",
        ("smoke", "broken"): "FAILED",
        ("train", "long"): "TIMEOUT",
        ("learn", "mlp"): "TIMEOUT",
        ("wrapup", "summary"): "COMPLETED",
    }
    problems = [
        f"{p}.{c} is {_command(report, p, c)['status']}, expected {s}"
        for (p, c), s in expect.items()
        if _command(report, p, c)["status"] != s
    ]
    timeout = _command(report, "train", "long")["timeout"] or {}
    if not (timeout.get("inherited") and timeout.get("level") == "phase"):
        problems.append(f"train.long should be stopped by the phase's deadline (inherited), got {timeout}")
    train = next(p for p in report["phases"] if p["name"] == "train")
    if train["status"] != "TIMEOUT" or (train.get("cleanup") or {}).get("status") != "COMPLETED":
        problems.append(f"phase train should be TIMEOUT with its cleanup COMPLETED, got {train['status']}")
    if report["status"] != "FAILED" or code != 1 or report["exit_code"] != 1:
        problems.append(f"benchmark should be FAILED with exit code 1, got {report['status']} / {code}")
    if problems:
        print("demo check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(
        f"demo check OK: exit code {code} is the expected one (a command failed on purpose); "
        f"train.long was stopped after {timeout['term_sent_s']}s by its phase's 3s budget (inherited: true), "
        "and the cleanup still ran."
    )
    return 0


NEVER = ("Traceback", "object at 0x", "NoneType: None", "Unexpected result", "unexpected exception")


def check_output(path: str) -> int:
    """What `grd run` printed holds no traceback or object repr, and its only ERROR lines are commands'
    own outcomes ("Finished in state Failed/TimedOut('phase.command: ...')")."""
    lines = Path(path).read_text(errors="replace").splitlines()
    problems = [f"{word!r} in the output" for word in NEVER if any(word in line for line in lines)]
    problems += [f"an ERROR that is not a command's outcome: {line}" for line in lines
                 if "| ERROR " in line and not re.search(r"Task run '[^']+' - Finished in state ", line)]
    if problems:
        print("demo check FAILED (" + path + "):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"demo check OK: {path} has no traceback, no object repr, and ERROR lines only for the commands' "
          "own outcomes")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--output":  # check_demo.py --output FILE (what grd run printed)
        sys.exit(check_output(sys.argv[2]))
    if sys.argv[1] == "--resumed":  # check_demo.py --resumed FIRST_REPORT RESUMED_REPORT CODE
        sys.exit(check_resumed(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
