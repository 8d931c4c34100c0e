"""``TrainConfig``: everything that decides a reference training run's result, validated by pydantic.

Invariant: two runs with equal configs (same seed, data, model, optimizer, batch size and number of ranks)
produce bit-identical weights on CPU, however often they are interrupted and resumed; the fields that only
shape *when* an attempt stops or how long it is expected to take (``time_left_s``, ``stop_at_step``,
``step_delay_s``, ``save_every_steps``, ``estimated_epoch_s``) never change the numbers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def plain_optionals(schema: dict[str, Any]) -> None:
    """Show an optional field (``int | None`` and the like) as a plain, optional input of its own type in the
    Prefect run form: ``anyOf [X, null]`` becomes ``X`` (the form would show a type toggle) with no default
    in the schema (the form would refuse its null default as "not of type X"); left empty, it is left out
    and the model's default, None, applies. The server's check of a run's parameters still accepts null for
    a field that is neither required nor has a schema default."""
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            prop.update(next(o for o in options if o != {"type": "null"}))
            del prop["anyOf"]
            if prop.get("default", ...) is None:
                del prop["default"]


class TrainConfig(BaseModel):
    """A small MLP regression run on data generated in-process from ``seed``."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=plain_optionals)

    epochs: int = Field(5, ge=1, description="Epochs to train in total (across every attempt).")
    batch_size: int = Field(
        16, ge=1, title="Batch size", description="Samples per optimizer step (per rank)."
    )
    samples: int = Field(256, ge=1, description="Size of the generated data set.")
    features: int = Field(8, ge=1, description="Input features of the generated data.")
    hidden: int = Field(32, ge=1, title="Hidden units", description="Width of the MLP's hidden layer.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout after the hidden layer (uses the RNG).")
    lr: float = Field(0.01, gt=0.0, title="Learning rate", description="Adam learning rate.")
    seed: int = Field(0, ge=0, description="Seed of the data, the initial weights and the data order.")
    num_workers: int = Field(0, ge=0, title="DataLoader workers", description="DataLoader worker processes.")
    save_every_steps: int | None = Field(
        None, ge=1, title="Save every N steps",
        description="Checkpoint every N optimizer steps; empty checkpoints at every epoch's end.",
    )
    time_left_s: float | None = Field(
        None,
        ge=0.0,
        title="Time budget (s)",
        description="This attempt's time budget; it saves and stops before it (GRD_TIME_LEFT_S too).",
    )
    initial_save_s: float = Field(
        1.0, ge=0.0, title="First save estimate (s)",
        description="Guess of one save's duration before one is measured.",
    )
    step_delay_s: float = Field(
        0.0, ge=0.0, title="Step delay (s)", description="Busy-wait added to each step (demos, benchmarks)."
    )
    estimated_epoch_s: float | None = Field(
        None,
        gt=0.0,
        title="Seconds per epoch (estimate)",
        description="Expected seconds per epoch, for long-run approval until the run has measured its own.",
    )
    stop_at_step: int | None = Field(
        None, ge=1, title="Stop at step",
        description="Save and stop this attempt when the global step reaches N (tests, slicing).",
    )
