"""A small Hugging Face Trainer run made resumable by grd: the three lines marked ``# grd``.

The model is a one-layer GPT-2 built from a config (nothing is downloaded), with dropout, trained with AdamW
and a linear learning-rate schedule on random tokens. Environment: CK (the run prefix), OUT_DIR (the
Trainer's output_dir), EPOCHS, OUT (the final weights), STEPS_LOG (the global step each optimizer step
makes, appended), STEP_DELAY (busy-wait per step), SIGNAL_AT (the process sends itself SIGNAL, default
SIGTERM, when that global step ends: a real signal at a chosen step), SAVE_STEPS (the Trainer's own saves
every N steps; none when unset), SAVE_TOTAL_LIMIT, EVAL=1 (evaluate at every epoch's end).
"""

import os
import signal
import time
from typing import Any

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from grd_blocks.checkpoint import RunCheckpoints
from grd_blocks.integrations.huggingface import GrdTrainerCallback

SAMPLES, LENGTH, BATCH = 64, 8, 4  # 16 optimizer steps an epoch


def tiny_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=LENGTH, n_embd=16, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config)


def dataset(samples: int = SAMPLES, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    tokens = torch.randint(0, 32, (samples, LENGTH), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": row, "labels": row} for row in tokens]


def arguments(output_dir: str, epochs: int, **overrides: Any) -> TrainingArguments:
    save_steps = int(os.environ.get("SAVE_STEPS", "0"))
    limit = int(os.environ.get("SAVE_TOTAL_LIMIT", "0")) or None
    options: dict[str, Any] = {
        "eval_strategy": "epoch" if os.environ.get("EVAL") == "1" else "no",
        "output_dir": output_dir, "num_train_epochs": epochs, "per_device_train_batch_size": BATCH,
        "learning_rate": 1e-2, "lr_scheduler_type": "linear", "logging_steps": 1, "seed": 0,
        "save_strategy": "steps" if save_steps else "no", "save_steps": save_steps or 500,
        "save_total_limit": limit, "report_to": "none", "use_cpu": True, "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    options.update(overrides)
    return TrainingArguments(**options)


class Probe(TrainerCallback):
    """Logs each step and sends SIGNAL at SIGNAL_AT (it runs before grd's callback in the same hook)."""

    def __init__(self) -> None:
        log = os.environ.get("STEPS_LOG")
        self.log_file = open(log, "a") if log else None  # noqa: SIM115
        self.delay = float(os.environ.get("STEP_DELAY", "0"))
        self.signal_at = int(os.environ.get("SIGNAL_AT", "-1"))
        self.signal = signal.Signals[os.environ.get("SIGNAL", "SIGTERM")]

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        end = time.perf_counter() + self.delay
        while time.perf_counter() < end:
            pass
        if self.log_file is not None:
            self.log_file.write(f"{state.global_step}\n")
            self.log_file.flush()
        if state.global_step == self.signal_at:
            os.kill(os.getpid(), self.signal)


def main() -> None:
    model = tiny_model()
    grd = GrdTrainerCallback(RunCheckpoints.from_url(os.environ["CK"]))  # grd
    trainer = Trainer(
        model=model, args=arguments(os.environ["OUT_DIR"], int(os.environ.get("EPOCHS", "3"))),
        train_dataset=dataset(), eval_dataset=dataset(8, seed=2), callbacks=[Probe(), grd],  # grd
    )
    trainer.train(resume_from_checkpoint=grd.resume_from(trainer))  # grd
    if os.environ.get("OUT"):
        torch.save({"model": model.state_dict(), "global_step": trainer.state.global_step}, os.environ["OUT"])


if __name__ == "__main__":
    main()
