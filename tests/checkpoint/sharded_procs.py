"""Start the ranks of a sharded-checkpoint test as real processes (gloo on CPU) and collect their results.

Each rank is ``python tests/checkpoint/_sharded_ranks.py SCENARIO ...`` with the torch.distributed
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) set, as torchrun would set it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("_sharded_ranks.py")
LIMIT_S = 120.0
"""Most seconds a group of ranks may take (a hung collective fails the test instead of hanging it)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Ranks:
    """A running group of ranks."""

    processes: list[subprocess.Popen[str]]

    def kill(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
        for process in self.processes:
            process.wait()


def start(world: int, scenario: str, *args: str, env: dict[str, str] | None = None) -> Ranks:
    port = str(free_port())
    processes = []
    for rank in range(world):
        rank_env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO), "RANK": str(rank),
                    "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": port, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        processes.append(subprocess.Popen(
            [sys.executable, str(SCRIPT), scenario, *args], env=rank_env, cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    return Ranks(processes)


@dataclass
class Finished:
    results: list[dict[str, Any]]
    """Every RESULT line of every rank, rank 0's first."""
    logs: list[str]
    """Every rank's stderr."""


def run(world: int, scenario: str, *args: str, env: dict[str, str] | None = None) -> Finished:
    """Run ``scenario`` on ``world`` ranks to the end; AssertionError (with their output) unless all exit
    0."""
    ranks = start(world, scenario, *args, env=env)
    outputs: list[tuple[str, str]] = []
    try:
        for process in ranks.processes:
            outputs.append(process.communicate(timeout=LIMIT_S))
    finally:
        ranks.kill()
    codes = [process.returncode for process in ranks.processes]
    assert codes == [0] * world, f"{scenario} on {world} ranks exited {codes}:\n" + "\n".join(
        f"--- rank {rank}\n{out[-3000:]}\n{err[-6000:]}" for rank, (out, err) in enumerate(outputs)
    )
    results = [json.loads(line[len("RESULT "):]) for out, _ in outputs for line in out.splitlines()
               if line.startswith("RESULT ")]
    return Finished(results, [err for _, err in outputs])
