"""A script-style training loop, the way nanoGPT's train.py is written: module level, no functions around the
loop, batches sampled with ``torch.randint`` from the global RNG, the next batch drawn (prefetched) before the
backward pass, a GradScaler, the learning rate set by iteration, a plain ``best_val_loss`` float.

The lines marked ``# grd`` are all it takes to resume bit for bit (10 added, 2 changed). It needs no
``with`` block and catches nothing: an uncaught stop exits 124 (deadline), 143 (SIGTERM) or 130 (SIGINT)
with its checkpoint committed. The prefetched batch is saved with the checkpoint (``batch``): the RNG state
saved is the one *after* drawing it, so without it a resumed run would train on the batch after.

Environment: MAX_ITERS (may grow between attempts), SAVE_EVERY, STEP_DELAY, STEPS_LOG, OUT (final weights).
"""

import math
import os
import time

import torch
from torch import nn

from grd_blocks.checkpoint import RunCheckpoints  # grd
from grd_blocks.training import ResumableTraining  # grd

max_iters = int(os.environ.get("MAX_ITERS", "30"))
eval_interval, eval_iters, warmup_iters, learning_rate = 10, 2, 5, 1e-2
block_size, batch_size = 4, 8
torch.manual_seed(1337)
data = torch.randn(512, 8)
model = nn.Sequential(nn.Linear(8 * block_size, 32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 8))
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)


def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i : i + block_size].flatten() for i in ix])
    return x, torch.stack([data[i + block_size] for i in ix])


def get_lr(it: int) -> float:
    if it < warmup_iters:
        return learning_rate * (it + 1) / warmup_iters
    return learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, it / max_iters)))


training = ResumableTraining(  # grd
    RunCheckpoints.from_env(default=None),  # grd: GRD_CHECKPOINT_URL under grd run
    {"model": model, "optimizer": optimizer, "scaler": scaler, "best_val_loss": 1e9, "batch": None},  # grd
    steps_per_epoch=None, save_every_steps=int(os.environ.get("SAVE_EVERY", "0")) or None,  # grd: step-only
)  # grd
start = training.resume()  # grd
iter_num, best_val_loss = start.global_step, start["best_val_loss"]  # grd (changed: was 0, 1e9)
log = open(os.environ["STEPS_LOG"], "a") if os.environ.get("STEPS_LOG") else None  # noqa: SIM115
X, Y = start["batch"] or get_batch()  # grd (changed: was get_batch())
while iter_num < max_iters:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if iter_num % eval_interval == 0:
        model.eval()
        with torch.no_grad():
            losses = [nn.functional.mse_loss(model(x), y).item() for x, y in (get_batch() for _ in range(2))]
        model.train()
        best_val_loss = min(best_val_loss, sum(losses) / eval_iters)
    loss = nn.functional.mse_loss(model(X), Y)
    X, Y = get_batch()  # prefetch the next batch while the backward pass runs
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    end = time.perf_counter() + float(os.environ.get("STEP_DELAY", "0"))
    while time.perf_counter() < end:
        pass
    iter_num += 1
    if log is not None:
        log.write(f"{iter_num}\n")
        log.flush()
    training.values.update(best_val_loss=best_val_loss, batch=(X, Y))  # grd
    training.step_done()  # grd
training.finish()  # grd
if os.environ.get("OUT"):
    result = {"model": model.state_dict(), "best_val_loss": best_val_loss, "iters": iter_num}
    torch.save(result, os.environ["OUT"])
