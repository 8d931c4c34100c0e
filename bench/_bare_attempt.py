"""The baseline of bench_attempt_cost.py: what a careful user writes without grd, one Prefect flow with one
task running ``subprocess.run(["true"])``, marking the same stages as grd's ``GRD_TIMELINE`` does (same clock,
same file format), so the two attempts are timed alike."""

from __future__ import annotations

import os
import time


def mark(name: str) -> None:
    with open(os.environ["GRD_TIMELINE"], "a") as out:
        out.write(f"{name} {time.monotonic():.6f}\n")


mark("main")

import subprocess  # noqa: E402

from prefect import flow, task  # noqa: E402

mark("cli")


@task
def run_true() -> int:
    mark("task")
    mark("spawn")
    code = subprocess.run(["true"], check=False).returncode
    mark("exited")
    return code


@flow
def bare() -> int:
    mark("flow")
    code = run_true()
    mark("task_end")
    return code


if __name__ == "__main__":
    mark("flow_module")
    result = bare()
    mark("flow_end")
    print(f"true exited {result}")
    mark("summary")
