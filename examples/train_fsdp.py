"""A training script you can copy: an FSDP2 (``fully_shard``) model whose sharded state every rank saves, that
resumes exactly after a budget stop, SIGTERM or a crash, also on another number of ranks.

Run it under torchrun (gloo on CPU, NCCL where CUDA is available) or alone::

    torchrun --nproc-per-node 2 examples/train_fsdp.py --steps 200 --checkpoint-url ./checkpoints/fsdp-demo
    python examples/train_fsdp.py --steps 200 --checkpoint-url ./checkpoints/fsdp-demo   # continues on 1 rank

Under ``grd run`` the URL comes from ``GRD_CHECKPOINT_URL`` and the budget from ``GRD_TIME_LEFT_S``. The lines
that make FSDP2 state resumable are the same as for any model: ``ResumableTraining`` notices that the model
holds DTensor parameters and saves through ``RunCheckpoints.save_sharded`` (docs/fsdp.md). Every step trains
on the same global batch whatever the number of ranks (each rank takes its slice), so a run resumed on
another world size continues the same computation up to floating-point reduction order.
Exit codes: 0 done, 124 saved and stopped before its deadline, 143 SIGTERM, 130 SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.errors import TrainingInterrupted
from grd_blocks.training import (
    Pacer,
    ResumableTraining,
    exit_now,
    make_deterministic,
    split_checkpoint_url,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="optimizer steps in all")
    p.add_argument("--global-batch", type=int, default=24, help="samples per step, over all ranks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--save-every-steps", type=int, default=5)
    p.add_argument("--checkpoint-url", default=os.environ.get("GRD_CHECKPOINT_URL"),
                   help="run prefix for checkpoints (default: $GRD_CHECKPOINT_URL)")
    p.add_argument("--resume-from", default=None, help="a run prefix or one checkpoint URL to start from")
    p.add_argument("--time-left", type=float, default=None, help="seconds (default: $GRD_TIME_LEFT_S)")
    p.add_argument("--stop-at-step", type=int, default=None, help="save and stop after this global step")
    p.add_argument("--step-delay", type=float, default=0.0, help="busy-wait per step, to make steps slower")
    p.add_argument("--report", default=None, help="write the final result as JSON here (rank 0)")
    return p.parse_args(argv)


def init_distributed() -> None:
    """torchrun's environment, or a group of one for a plain ``python`` run (FSDP2 needs a process group)."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def global_batch(seed: int, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of ``step`` (the same for every world size)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x = torch.randn(size, 8, generator=generator)
    y = x[:, :1] * 0.5 - x[:, 1:2] + 0.1 * torch.randn(size, 1, generator=generator)
    return x, y


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} must be a multiple of the {world} ranks")
    per_rank = args.global_batch // world

    # 1. Seed, build the model, shard it (FSDP2), then the optimizer over the sharded parameters.
    make_deterministic(args.seed, threads=1)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    # 2. The same two lines as for any model: every rank saves its shards, one commit for all.
    checkpoints = RunCheckpoints.from_url(args.checkpoint_url) if args.checkpoint_url else None
    training = ResumableTraining(
        checkpoints,
        {"model": model, "optimizer": optimizer},
        steps_per_epoch=None,  # step-only: positions count global steps, whatever the world size
        save_every_steps=args.save_every_steps,
        pacer=Pacer.from_sources(time_left_s=args.time_left),
        stop_at_step=args.stop_at_step,
        resume_from=split_checkpoint_url(args.resume_from) if args.resume_from else None,
    )
    try:
        with training:
            start = training.resume()
            if rank == 0:
                print(f"starting at step {start.global_step} on {world} ranks", flush=True)
            for step in range(start.global_step, args.steps):
                x, y = global_batch(args.seed, step, args.global_batch)
                x, y = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                optimizer.step()
                end = time.perf_counter() + args.step_delay
                while time.perf_counter() < end:
                    pass
                training.step_done(metrics={"loss": loss.item()})
            training.finish()
    except TrainingInterrupted as exc:
        if rank == 0:
            print(exc, file=sys.stderr, flush=True)
        return exc.exit_code
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        result = {
            "global_step": training.position.global_step,
            "resumed_step": training.resumed_from.global_step if training.resumed_from else None,
            "world_size": world,
            "params": {key: value.tolist() for key, value in full.items()},
        }
        if args.report:
            with open(args.report, "w") as fh:
                json.dump(result, fh)
        print(f"done: {training.position.global_step} steps on {world} ranks", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_now(main())
