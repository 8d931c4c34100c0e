"""A phase of N commands (`sleep 0.2`) fanned out by grd over a 4-CPU local Ray cluster, against plain Ray
tasks each running `subprocess.run` (no grd: no keeper, no deadline, no kill, output not kept).

The cluster is the tests' (tests/fixtures/ray_cluster.py): a head and a second node of 2 CPUs each, each a
`ray start --block` process on 127.0.0.1 in a session of its own, stopped by pid, never by `ray stop`. Both
sides ask 1 CPU per command, so 4 run at once; grd's side runs the engine without Prefect with
`max_parallel: 4` (what a Prefect task adds per command is measured by bench_overhead.py). The sides run one
after another in the order given, after one untimed warm-up of each (bench/_fanout.py: the phase, the
figures). Writes bench/results/ray.json with each side's wall time, throughput, per-command overhead and
ratio to plain Ray, the load before each side, and the date.

    .venv/bin/python bench/bench_ray.py [--commands 1000] [--quick]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "ray.json"

from bench._fanout import SLOTS, commands_wanted, grd, measure, sleep_once, write_results  # noqa: E402  (after ROOT is on the path)
from tests.fixtures.ray_cluster import RayCluster  # noqa: E402


def _connect(address: str) -> None:
    """Connect this process to the bench's cluster (a grd run's end disconnects it) and check it is that
    cluster: ``ray`` would otherwise start a local one of its own on first use."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace="grd", log_to_driver=False, configure_logging=False)
    cpus = ray.cluster_resources().get("CPU")
    if cpus != SLOTS:
        raise RuntimeError(f"connected to a Ray cluster of {cpus} CPUs, not the bench's {SLOTS} at {address}")


def _plain(commands: int, address: str) -> tuple[float, int]:
    import ray

    _connect(address)
    task = ray.remote(num_cpus=1, max_retries=0)(sleep_once)
    start = time.monotonic()
    codes = ray.get([task.remote(i) for i in range(commands)])
    wall = time.monotonic() - start
    return wall, sum(code == 0 for code in codes)


def main() -> None:
    commands = commands_wanted(__doc__ or "")
    os.environ.setdefault("GRD_RUNTIME_DIR", tempfile.mkdtemp(prefix="grd-runtime-bench-"))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    directory = Path(tempfile.mkdtemp(prefix="grd-ray-"))  # short: Ray's socket paths must fit 107 bytes
    cluster = RayCluster(directory)
    try:
        cluster.start()
        import ray

        from grd_blocks.orchestration.ray_dispatch import close_dispatchers

        def grd_ray(n: int, where: Path) -> tuple[float, int]:
            _connect(cluster.address)  # grd's dispatcher uses this connection
            return grd(n, f"{{ray: '{cluster.address}', num_cpus: 1}}", where)

        try:
            sides: dict[str, Callable[[int, Path], tuple[float, int]]] = {
                "plain_ray": lambda n, where: _plain(n, cluster.address),
                "grd_ray": grd_ray,
            }
            results = measure(sides, commands, directory / "scratch")
        finally:
            close_dispatchers()
            ray.shutdown()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    write_results(RESULTS, commands, results, "plain_ray", cpus_in_cluster=SLOTS,
                  note="grd's side runs the engine without Prefect; both Ray nodes on this machine "
                  "(127.0.0.1)")


if __name__ == "__main__":
    main()
