"""`grd run` SIGKILLed at random moments of a running command: is anything of its left once the grace passed?

Each trial starts `grd run` on a one-command spec against one Prefect API (started once, as the tests do) and
SIGKILLs it a random 0-1 s after the command's tree (a child and a setsid grandchild, each handling SIGTERM
like a checkpointing job) said it is up. Then, independently of grd, /proc is scanned for the tree's marker
until nothing carries it (bounded by grace + 20 s) and the ephemeral pieces grd started are looked for: any
process whose parent was the killed `grd run`. Writes bench/results/grd_run_kill.json: trials, survivors,
time from the kill to the last member gone (p50/p99/max), whether each tree got SIGTERM first, the load.

    .venv/bin/python bench/bench_grd_run_kill.py [--trials 50] [--grace 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.process.helpers import marked, term_recording_tree  # noqa: E402  (the suite's independent /proc scan)

RESULTS = ROOT / "bench" / "results" / "grd_run_kill.json"


def children_of(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


def trial(work: Path, index: int, api_url: str, grace: float, rng: random.Random) -> dict[str, Any]:
    marker = work / f"tree{index}"
    spec = work / f"spec{index}.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: kill{index}
        phases:
          - name: p
            commands:
              - name: job
                run: {json.dumps(term_recording_tree(marker))}
                grace: {grace}s
        """))
    env = dict(os.environ, PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    grd = subprocess.Popen(
        [sys.executable, "-m", "grd_blocks.cli", "run", str(spec), "--store", str(work / "ckpt")],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    end = time.monotonic() + 120
    while not Path(f"{marker}.started").exists() and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 1.0))  # the random moment of the kill: the variable under test
    helpers = children_of(grd.pid)  # its guardian (and the ephemeral API, when it started one)
    grd.kill()
    killed_at = time.monotonic()
    grd.wait()
    bound = killed_at + grace + 20.0
    while marked(str(marker)) and time.monotonic() < bound:
        time.sleep(0.001)
    gone_s = time.monotonic() - killed_at
    survivors = marked(str(marker))
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    while any(Path(f"/proc/{pid}").exists() for pid in helpers) and time.monotonic() < bound:
        time.sleep(0.01)
    left_helpers = [pid for pid in helpers if Path(f"/proc/{pid}").exists()]
    return {
        "survivors": len(survivors),
        "gone_after_kill_s": None if survivors else round(gone_s, 4),
        "got_sigterm_first": bool(list(work.glob(f"tree{index}.term.*"))),
        "helpers_left": len(left_helpers),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    rows = []
    with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
        api_url = str(PREFECT_API_URL.value())
        for index in range(args.trials):
            rows.append(trial(Path(tmp), index, api_url, args.grace, rng))
            print(f"trial {index}: {rows[-1]}", flush=True)
    gone = sorted(r["gone_after_kill_s"] for r in rows if r["gone_after_kill_s"] is not None)

    def pct(q: float) -> float | None:
        return gone[min(len(gone) - 1, round(q / 100 * (len(gone) - 1)))] if gone else None

    result = {
        "benchmark": "grd_run_kill",
        "date": time.strftime("%Y-%m-%d"),
        "config": {"trials": args.trials, "grace_s": args.grace, "seed": args.seed},
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "trials": len(rows),
        "survivors": sum(r["survivors"] for r in rows),
        "trees_with_survivors": sum(1 for r in rows if r["survivors"]),
        "helpers_left": sum(r["helpers_left"] for r in rows),
        "got_sigterm_first": sum(1 for r in rows if r["got_sigterm_first"]),
        "gone_after_kill_s": {"p50": pct(50), "p99": pct(99), "max": gone[-1] if gone else None,
                              "mean": statistics.fmean(gone) if gone else None},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    return 0 if result["survivors"] == 0 and result["helpers_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
