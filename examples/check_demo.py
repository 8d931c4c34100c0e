"""Check the demo's report says what `make demo` promises: exit 0 if it does, 1 naming the mismatch if not."""

from __future__ import annotations

import json
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


def main(path: str, code: int) -> int:
    report = json.loads(Path(path).read_text())
    expect = {
        ("smoke", "hello"): "COMPLETED",
        ("smoke", "steps"): "COMPLETED",
        ("smoke", "broken"): "FAILED",
        ("train", "long"): "TIMEOUT",
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
