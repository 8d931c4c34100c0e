"""A stand-in for real work: prints a step every ``--interval`` seconds, honours SIGTERM, can fail on purpose.

It reads what grd gives every command (GRD_TIME_LEFT_S, GRD_ATTEMPT, GRD_RUN_KEY) and prints it first, so the
demo shows a command's budget from the inside. Exit codes: 0 done, 3 ``--fail-at`` reached, 143 stopped by
SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from types import FrameType

_stop = False


def _on_term(signum: int, frame: FrameType | None) -> None:
    global _stop
    _stop = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--fail-at", type=int, default=None, help="exit 3 at this step")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_term)
    print(
        f"run {os.environ.get('GRD_RUN_KEY', '-')} attempt {os.environ.get('GRD_ATTEMPT', '-')}: "
        f"{args.steps} steps, {os.environ.get('GRD_TIME_LEFT_S', 'inf')}s left in my budget",
        flush=True,
    )
    for step in range(1, args.steps + 1):
        if args.fail_at is not None and step == args.fail_at:
            print(f"step {step}: simulated failure", file=sys.stderr, flush=True)
            return 3
        deadline = time.monotonic() + args.interval
        while time.monotonic() < deadline and not _stop:
            time.sleep(min(0.05, args.interval))
        if _stop:
            print(f"SIGTERM at step {step}: saving nothing, exiting cleanly", flush=True)
            return 143
        print(f"step {step}/{args.steps}", flush=True)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
