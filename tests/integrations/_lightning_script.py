"""A small Lightning training run made resumable by grd: the three lines marked ``# grd``.

Environment: CK (the run prefix), EPOCHS, OUT (rank 0 writes the final weights), STEPS_LOG (rank 0 appends
the global step each batch makes), STEP_DELAY (busy-wait per step), SIGTERM_AT (the module sends itself
SIGTERM after that global step: a real signal at a chosen batch), TOP_K, EVERY (ModelCheckpoint every N
training steps), MLFLOW_URI (log to MLflow the way Lightning users do: an ``MLFlowLogger`` writing every
step, its run made the active one around ``fit`` as docs/mlflow.md says). Run alone, or under torchrun with 2
ranks (DDP, gloo, CPU).
"""

import contextlib
import os
import signal
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.integrations.lightning import GrdLightning
from grd_blocks.training import synthetic_regression


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
        self.log_file = open(os.environ["STEPS_LOG"], "a") if os.environ.get("STEPS_LOG") else None  # noqa: SIM115

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss, sync_dist=True)
        if self.log_file is not None and self.trainer.is_global_zero:
            self.log_file.write(f"{self.trainer.global_step + 1}\n")  # the step this batch makes
            self.log_file.flush()
        end = time.perf_counter() + float(os.environ.get("STEP_DELAY", "0"))
        while time.perf_counter() < end:
            pass
        return loss

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        at = int(os.environ.get("SIGTERM_AT", "-1"))
        if at == self.trainer.global_step and self.trainer.is_global_zero:
            os.kill(os.getpid(), signal.SIGTERM)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def main() -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    model = Regressor()
    grd = GrdLightning(RunCheckpoints.from_url(os.environ["CK"]))  # grd
    every = int(os.environ.get("EVERY", "0")) or None
    logger: Any = False
    active: Any = contextlib.nullcontext()
    if os.environ.get("MLFLOW_URI"):
        import mlflow
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(experiment_name="grd-test", tracking_uri=os.environ["MLFLOW_URI"])
        mlflow.set_tracking_uri(os.environ["MLFLOW_URI"])
        active = mlflow.start_run(run_id=logger.run_id)
    trainer = pl.Trainer(
        max_epochs=int(os.environ.get("EPOCHS", "4")), accelerator="cpu", devices=world,
        strategy="ddp" if world > 1 else "auto", logger=logger, log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=os.environ["CK"] + "-pl",
        plugins=[grd.io],  # grd
        callbacks=[grd, ModelCheckpoint(monitor="loss", save_top_k=int(os.environ.get("TOP_K", "2")),
                                        every_n_train_steps=every, save_last=True)],
    )
    loader = grd.loader(synthetic_regression(256, 8, seed=0), batch_size=16 // world, seed=0)  # grd
    with active:
        trainer.fit(model, train_dataloaders=loader, ckpt_path="grd:latest")
    if trainer.is_global_zero and os.environ.get("OUT"):
        torch.save({"model": model.state_dict(), "global_step": trainer.global_step}, os.environ["OUT"])


if __name__ == "__main__":
    main()
