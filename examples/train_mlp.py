"""A training script you can copy: a small MLP that resumes exactly after SIGTERM, a deadline or a crash.

Run it alone or under torchrun (gloo, CPU, DDP)::

    python examples/train_mlp.py --epochs 5 --checkpoint-url ./checkpoints/mlp-demo
    torchrun --nproc-per-node 2 examples/train_mlp.py --epochs 5 --checkpoint-url ./checkpoints/mlp-ddp

Run it again with the same URL and it continues at the exact step where it stopped. Under ``grd run`` the URL
comes from ``GRD_CHECKPOINT_URL``, the time budget from ``GRD_TIME_LEFT_S`` and a deadline warning signal
from ``GRD_WARN_SIGNAL``. Exit codes: 0 done, 143 stopped by SIGTERM, 130 by SIGINT, 124 saved and stopped
before its deadline (the checkpoint is committed in each case; run again to continue). It leaves through
``exit_now``: atexit callbacks run, the seconds of interpreter teardown with torch loaded do not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import TrainingInterrupted
from grd_blocks.training import (
    Pacer,
    ResumableTraining,
    batches_per_epoch,
    exit_now,
    make_deterministic,
    seeded_loader,
    split_checkpoint_url,
    synthetic_regression,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--save-every-steps", type=int, default=None, help="default: checkpoint every epoch")
    p.add_argument(
        "--checkpoint-url",
        default=os.environ.get("GRD_CHECKPOINT_URL"),
        help="run prefix for checkpoints (default: $GRD_CHECKPOINT_URL)",
    )
    p.add_argument("--resume-from", default=None, help="a run prefix or one checkpoint URL to start from")
    p.add_argument("--time-left", type=float, default=None, help="seconds (default: $GRD_TIME_LEFT_S)")
    p.add_argument("--step-delay", type=float, default=0.0, help="busy-wait per step, to make steps slower")
    p.add_argument("--steps-log", default=None, help="append each finished global step here (rank 0)")
    p.add_argument("--report", default=None, help="write the final result as JSON here (rank 0)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    # 1. Seed, then build everything that consumes random numbers (as any script does).
    make_deterministic(args.seed, threads=1)  # omit threads= to keep yours (and your numbers)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    dataset = synthetic_regression(args.samples, 8, seed=args.seed)

    # 2. Describe what to save; resume() restores it (and, last, the RNG) from the newest checkpoint.
    checkpoints = RunCheckpoints.from_url(args.checkpoint_url) if args.checkpoint_url else None
    training = ResumableTraining(
        checkpoints,
        {"model": model, "optimizer": optimizer},
        steps_per_epoch=batches_per_epoch(len(dataset), args.batch_size, world),
        save_every_steps=args.save_every_steps,
        pacer=Pacer.from_sources(time_left_s=args.time_left),  # also reads GRD_TIME_LEFT_S
        resume_from=split_checkpoint_url(args.resume_from) if args.resume_from else None,
    )
    net = DistributedDataParallel(model) if distributed else model
    log = open(args.steps_log, "a") if args.steps_log and rank == 0 else None  # noqa: SIM115
    try:
        with training:  # SIGTERM/SIGINT now mean "save at the next step, stop"
            start = training.resume()
            if rank == 0:
                print(
                    f"starting at epoch {start.epoch} batch {start.batch} (step {start.global_step})",
                    flush=True,
                )
            for epoch in range(start.epoch, args.epochs):
                loader = seeded_loader(
                    dataset,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    epoch=epoch,
                    skip_batches=training.skip_batches(epoch),
                    num_workers=args.num_workers,
                    rank=rank,
                    world_size=world,
                )
                for x, y in loader:
                    optimizer.zero_grad()
                    loss = nn.functional.mse_loss(net(x), y)
                    loss.backward()
                    optimizer.step()
                    end = time.perf_counter() + args.step_delay
                    while time.perf_counter() < end:
                        pass
                    if log is not None:
                        log.write(f"{training.position.global_step + 1}\n")
                        log.flush()
                    training.step_done()  # saves when due; saves and raises when stopping
                training.epoch_done(metrics={"loss": loss.item()})
            training.finish()
    except TrainingInterrupted as exc:
        if rank == 0:
            print(exc, file=sys.stderr, flush=True)
        return exc.exit_code
    finally:
        if log is not None:
            log.close()
        if distributed:
            dist.destroy_process_group()
    if rank == 0:
        params = {k: v.tolist() for k, v in model.state_dict().items()}
        result = {
            "global_step": training.position.global_step,
            "epochs": training.position.epoch,
            "resumed_step": training.resumed_from.global_step if training.resumed_from else None,
            "params": params,
        }
        if args.report:
            with open(args.report, "w") as fh:
                json.dump(result, fh)
        print(f"done: {training.position.epoch} epochs, {training.position.global_step} steps", flush=True)
    return 0


if __name__ == "__main__":
    exit_now(main())
