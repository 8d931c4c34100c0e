"""The ``train`` flow: the reference MLP run, checkpointed to a store, resumed by retries.

Invariant: the run key is ``run_key``, else ``resume_from`` (a run key, or the run named by a checkpoint URL),
else the flow run id, which Prefect keeps across automatic retries and UI "Retry": so a retry continues from
``{store}/{run_key}``'s newest checkpoint. The checkpoint is committed at every stop, which is
logged once, as one WARNING line saying where the state is and how to resume. A stop Prefect will retry (the
deadline, ``stop_at_step`` or a SIGTERM no cancel asked for, with retries left) raises a plain
``TrainingInterrupted``; with no retry left the run ends in a state named for the stop, whose message is that
line: TimedOut (deadline), Cancelled (Ctrl-C, or the SIGTERM of a cancel asked in the UI or API), Cancelled
named Preempted (any other SIGTERM), Failed named Stopped (``stop_at_step``).
With ``approval_budget``, a run estimated beyond it waits for approval before training, and every attempt is
bounded by the approved limit (its pacer saves before it). A user's mistake (a malformed duration, run key,
store or checkpoint URL) or a refused approval ends the run before any training, ``rejected``: one ERROR line
naming the parameter and a Failed state named ``InvalidParameters`` or ``NotApproved``. Every commit
updates the checkpoint index artifact and emits ``grd.checkpoint.committed``; each epoch updates the
progress artifact.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Cancelled, Failed

from grd_blocks.errors import TrainingInterrupted
from grd_blocks.orchestration.runkey import resolve_run_key
from grd_blocks.orchestration.status import Status
from grd_blocks.prefect_edge.approval import approval_asker
from grd_blocks.prefect_edge.checkpoint_index import TrainingArtifacts
from grd_blocks.prefect_edge.forms import OptionalText, Title, unset_if_blank
from grd_blocks.prefect_edge.heartbeats import install as prompt_heartbeats
from grd_blocks.prefect_edge.run_end import MISTAKES, REFUSALS, quiet_run_ends, rejected
from grd_blocks.prefect_edge.states import final_state
from grd_blocks.prefect_edge.stops import cancel_requested, flow_run_id, retries_left, supervisor_owns_stop
from grd_blocks.prefect_edge.store import run_store
from grd_blocks.training.config import TrainConfig
from grd_blocks.training.long_run import approve_training
from grd_blocks.training.reference import train_mlp
from grd_blocks.training.resume import CheckpointUrl, is_url, split_checkpoint_url

prompt_heartbeats()  # the run's end waits for no heartbeat sleep (heartbeats.py)


def _ended(exc: TrainingInterrupted) -> State[Any]:
    """The final state of an attempt that saved and stopped with no retry to follow: named for the stop, its
    message the one line already logged, its data the exception (what calling the flow raises)."""
    data = {"checkpoint_url": exc.checkpoint_url, "global_step": exc.global_step}
    if exc.reason == "cancelled" or (exc.reason == "preempted" and cancel_requested()):
        # the data rides in a RunEnded: Prefect resolves a Cancelled state's data into the exception it
        # raises; a plain dict made the engine log "Unexpected result for failed state", with a traceback
        return final_state(Status.CANCELLED, data, str(exc))
    if exc.reason == "preempted":  # a SIGTERM that no cancel asked for (the worker stopping, a preemption)
        return Cancelled(name="Preempted", data=exc, message=str(exc))
    return Failed(name="TimedOut" if exc.reason == "deadline" else "Stopped", data=exc, message=str(exc))


@flow(name="grd-train", retries=2, retry_delay_seconds=0, validate_parameters=True)
def train(
    config: Annotated[TrainConfig, Title("Training configuration")],
    store: Annotated[str | None, OptionalText, Title("Checkpoint store")] = "",
    run_key: Annotated[str | None, OptionalText, Title("Run key")] = "",
    resume_from: Annotated[str | None, OptionalText, Title("Resume from")] = "",
    approval_budget: Annotated[str | None, OptionalText, Title("Approval budget")] = "",
    auto_approve: Annotated[bool, Title("Auto-approve")] = False,
) -> dict[str, Any] | State[Any]:
    """Train ``config`` as run ``run_key`` in ``store`` (block name or URL), resuming where it stopped.

    Args:
        config: The training run: epochs, batch size, data, model and optimizer settings, seed, and when an
            attempt saves and stops. Equal configs give bit-identical weights however often a run resumes.
        store: Where checkpoints go: a CheckpointStore block name (e.g. nightly-s3, whose keep_last and
            keep_best apply) or a URL or path (s3://bucket/prefix, ./checkpoints). Empty: the block named
            default (./checkpoints).
        run_key: The run's identity in the store. Empty: the run key resume_from names, else this flow
            run's id (so an automatic retry or a Retry in the UI continues from its latest checkpoint).
        resume_from: Continue an earlier run: its run key, or a checkpoint URL such as
            ./checkpoints/run_42/epoch_3. Empty: start afresh (unless run_key has checkpoints).
        approval_budget: A duration such as 2h: a run estimated beyond it (epochs left x measured or
            estimated_epoch_s seconds) waits for a person's approval (the UI's Resume form or grd approve).
            Empty: never ask, no limit.
        auto_approve: Approve a long run without asking, recording the estimate as the limit (CI).
    """
    quiet_run_ends()  # an expected stop is the WARNING line below, not also a traceback
    store, run_key, resume_from = unset_if_blank(store), unset_if_blank(run_key), unset_if_blank(resume_from)
    approval_budget = unset_if_blank(approval_budget)
    logger = get_run_logger()
    source: CheckpointUrl | None = None
    resume_key = resume_from
    try:
        if resume_from and is_url(resume_from):
            source = split_checkpoint_url(resume_from)
            resume_key = None if run_key else source.run_key
        key = resolve_run_key(run_key, resume_key, flow_run_id())
        block: Any = run_store(store)
        checkpoints = block.engine().run(key)
        logger.info("run key %s, checkpoints %s", key, checkpoints.url)
        budget = approve_training(
            config,
            key,
            checkpoints,
            approval_budget=approval_budget,
            ask=approval_asker(auto_approve=auto_approve, store=block),
            resume_from=source,
        )
    except (*MISTAKES, *REFUSALS) as exc:  # the user's to fix: one line, no traceback
        return rejected(exc, logger, "training run")
    observer = TrainingArtifacts(key, checkpoints, target_epochs=config.epochs, attempt=flow_run.run_count,
                                 log=logger)
    try:
        result = train_mlp(config, checkpoints, resume_from=source, budget=budget, observer=observer)
    except TrainingInterrupted as exc:
        logger.warning("%s", exc)  # the one line: it says where the state was saved and how to resume
        if exc.reason in ("deadline", "stop_at_step", "preempted") and retries_left() > 0 \
                and not (exc.reason == "preempted" and cancel_requested()):
            raise exc.plain() from None  # Prefect retries it; a TimeoutError would be logged again as a repr
        if supervisor_owns_stop():
            raise
        return _ended(exc)
    if result.resumed_url:
        logger.info("resumed from %s at epoch %s", result.resumed_url, result.resumed_epoch)
    return result.to_dict()
