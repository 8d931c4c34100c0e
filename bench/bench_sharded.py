"""Sharded (FSDP2) checkpoint saves through grd against plain torch.distributed.checkpoint, same target.

Two ranks (gloo on CPU, one process each, started here) hold an FSDP2 model whose parameters and AdamW
state add up to the state size. For each size, rounds alternate the side that goes first:
- **grd**: ``RunCheckpoints.save_sharded`` of the ``get_state_dict`` model and optimizer state: every rank
  writes and hashes its shards, rank 0 writes DCP's metadata, the manifest, then LATEST.json;
- **dcp**: ``torch.distributed.checkpoint.save`` of the same state dict with DCP's own ``FsspecWriter`` into
  a fresh folder of the same target (what a user of plain DCP writes: no checksums, no commit).
The target is a local directory, or with ``--store s3`` a bucket of a SeaweedFS server on 127.0.0.1 (started
here; both sides get the same ``storage_options``).
Each save is timed on rank 0 from a barrier before it to a barrier after it; each side deletes its save from
two rounds before (untimed), as a run keeping its last two checkpoints does. Reported: medians, the fastest
and slowest, throughput ratio grd / dcp (goal >= 0.9x) and the load average. Writes
``bench/results/sharded.json`` (``sharded_s3.json`` with ``--store s3``).

Run: .venv/bin/python bench/bench_sharded.py [--sizes 64,512] [--rounds 7] [--quick] [--store s3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "sharded.json"
RESULTS_S3 = ROOT / "bench" / "results" / "sharded_s3.json"
MiB = 2**20
WIDTH = 1024  # square Linear layers of WIDTH x WIDTH float32 (4 MiB of weights each)


def _model(size_mib: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """An FSDP2 model whose weights + AdamW's two moments come to about ``size_mib`` MiB in all."""
    from torch.distributed.fsdp import fully_shard

    layers = max(1, round(size_mib / 3 / (WIDTH * WIDTH * 4 / MiB)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers)))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, WIDTH)).sum().backward()
    optimizer.step()  # the optimizer holds its moments
    optimizer.zero_grad()
    return model, optimizer


def _rank(rank: int, world: int, port: int, work: str, sizes: list[int], rounds: int, out: str,
          target: str, options: dict[str, Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from grd_blocks.checkpoint import RunCheckpoints

    results = []
    for size in sizes:
        model, optimizer = _model(size)
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        local_bytes = sum(
            t.to_local().numel() * t.element_size() if hasattr(t, "to_local") else 0
            for part in (model_state, optim_state.get("state", {}))
            for t in _tensors(part)
        )
        totals = [0] * world
        dist.all_gather_object(totals, local_bytes)
        base = f"{target}/size-{size}"
        run = RunCheckpoints.from_url(f"{base}/grd", storage_options=options or None)
        dcp_root = f"{base}/dcp"
        fs = run.fs
        runs: dict[str, list[float]] = {"grd": [], "dcp": []}
        for number in range(rounds + 1):  # the first round warms both up, untimed
            order = ("grd", "dcp") if number % 2 == 0 else ("dcp", "grd")
            for side in order:
                dist.barrier()
                start = time.perf_counter()
                if side == "grd":
                    run.save_sharded(state, step=number)
                else:
                    dcp_save(state, storage_writer=FsspecWriter(f"{dcp_root}/step_{number}", **options))
                dist.barrier()
                elapsed = time.perf_counter() - start
                if number > 0:
                    runs[side].append(elapsed)
                if rank == 0 and number >= 2:  # keep the last two of each side, untimed
                    if side == "grd":
                        run.delete(f"step_{number - 2}")
                    else:
                        fs.rm(f"{dcp_root}/step_{number - 2}", recursive=True)
                dist.barrier()
        blocked = _async_blocked(run, state, base=10 * (rounds + 1))
        if rank == 0:
            state_mib = sum(totals) / MiB
            medians = {side: statistics.median(times) for side, times in runs.items()}
            results.append({
                "size_mib": round(state_mib, 1),
                "ranks": world,
                "grd_save_s": medians["grd"],
                "dcp_save_s": medians["dcp"],
                "grd_mib_s": state_mib / medians["grd"],
                "dcp_mib_s": state_mib / medians["dcp"],
                "grd_vs_dcp": medians["dcp"] / medians["grd"],
                "runs_s": {side: [round(t, 5) for t in times] for side, times in runs.items()},
                "async_blocked_s": [round(t, 5) for t in blocked["calls"]],
                "async_blocked_share": statistics.median(blocked["calls"]) / medians["grd"],
                "async_written": blocked["written"],
                "loadavg_after": list(os.getloadavg()),
            })
        if rank == 0:
            fs.rm(base, recursive=True)
        dist.barrier()
    if rank == 0:
        pathlib.Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


ASYNC_SAVES = 12
"""Back-to-back ``save_sharded_async`` calls per size (after one untimed call that makes the writer's process
group and the snapshot buffers)."""


def _async_blocked(run: Any, state: dict[str, Any], base: int) -> dict[str, Any]:
    """Seconds each back-to-back ``save_sharded_async`` call blocked the loop (the slowest rank's, per call:
    the loop's next collective waits for it), and how many of the calls were written (the others superseded:
    a loop saving faster than the store)."""
    run.save_sharded_async(state, step=base)
    run.flush()
    superseded_before = len(run.superseded)
    calls = []
    for number in range(1, ASYNC_SAVES + 1):
        dist.barrier()  # the loop's own collective between two saves
        start = time.perf_counter()
        run.save_sharded_async(state, step=base + number)
        mine = time.perf_counter() - start
        slowest = [0.0] * dist.get_world_size()
        dist.all_gather_object(slowest, mine)
        calls.append(max(slowest))
    run.flush()
    return {"calls": calls, "written": ASYNC_SAVES - (len(run.superseded) - superseded_before)}


def _tensors(value: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="64,512", help="state sizes in MiB (model + AdamW), all ranks")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="64 MiB, 3 rounds")
    parser.add_argument("--store", choices=["local", "s3"], default="local",
                        help="a local directory, or a SeaweedFS S3 bucket on 127.0.0.1")
    args = parser.parse_args()
    sizes = [64] if args.quick else [int(size) for size in args.sizes.split(",")]
    args.rounds = 3 if args.quick else args.rounds
    load_before = list(os.getloadavg())
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory(dir=os.environ.get("GRD_BENCH_DIR")))
        target, options = str(pathlib.Path(work) / "store"), {}
        if args.store == "s3":
            from tests.fixtures.seaweed import running_seaweed

            server = stack.enter_context(
                running_seaweed(pathlib.Path(work) / "seaweedfs", volume_size_limit_mb=1024))
            target, options = server.new_bucket(), server.storage_options
        out = os.path.join(work, "rows.json")
        mp.start_processes(  # type: ignore[attr-defined,no-untyped-call]
            _rank, args=(args.ranks, _free_port(), work, sizes, args.rounds, out, target, options),
            nprocs=args.ranks, start_method="spawn",
        )
        rows = json.loads(pathlib.Path(out).read_text())
    results = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "store": "SeaweedFS (weed server -s3) on 127.0.0.1" if args.store == "s3" else "local disk",
        "loadavg_before": load_before,
        "loadavg_after": list(os.getloadavg()),
        "results": rows,
    }
    path = RESULTS_S3 if args.store == "s3" else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    for row in rows:
        print(f"{row['size_mib']:.0f} MiB on {row['ranks']} ranks: grd {row['grd_mib_s']:.0f} MiB/s, "
              f"plain DCP {row['dcp_mib_s']:.0f} MiB/s, grd / dcp {row['grd_vs_dcp']:.2f}x")


if __name__ == "__main__":
    main()
