"""Serving one unlearning request: the one path from a plan to a trained, committed request.

:func:`serve_request` is what the stream runs for every request, and what tests and scripts
call to train requests the same way without a stream::

    plan (protocols.plan_request)
      -> start weights (the base when the plan says so) and the seed
      -> data position            data.begin_request(plan, train_steps)
      -> method preparation       module.begin_request(plan, captions, vocabulary, cache_dir)
      -> request hooks            RequestCallback.on_request_start
      -> fit                      train_steps optimizer steps on the caller's Trainer
                                  (a training-free method: its closed-form edit instead)
      -> end hooks                RequestCallback.on_request_end, request_records
      -> end of training          module.end_request (LoRA: the adapter is fused into the weights)
      -> commit                   the caller's (the stream writes through its RunFolder)

One Trainer serves every request (its callbacks, logger and step count persist), which needs a
few of Lightning's internals. They are all touched here and nowhere else, each with the reason,
and ``tests/test_serving.py::test_lightning_internals_we_rely_on`` fails when a Lightning release
changes one of them (``pyproject.toml`` pins Lightning's minor version for the same reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_unlearn.callbacks.base import request_callbacks
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.preemption import EXIT_PREEMPTED, EXIT_SIGINT, EXIT_SIGTERM, StreamStopped
from lightning_unlearn.protocols import RequestPlan
from lightning_unlearn.unlearning_module import NonFiniteLossError, UnlearningModule

if TYPE_CHECKING:
    from lightning.fabric.plugins import CheckpointIO

    from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
    from lightning_unlearn.request_checkpoints import RequestCheckpoints


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted request resumes: its mid-request checkpoint, and the Trainer's
    ``global_step`` when the request first started (the checkpoint restores the step count)."""

    checkpoint: Path
    request_start_step: int


@dataclass
class ServedRequest:
    """A request trained by :func:`serve_request`, before (and as given to) its commit."""

    plan: RequestPlan
    train_steps: int
    """The step cap the request trained under."""
    request_start_step: int
    """The Trainer's ``global_step`` when the request started."""
    steps: int = 0
    """Optimizer steps the request trained (fewer than ``train_steps`` when a callback stopped it)."""
    train_seconds: float = 0.0
    """Wall time of preparation, hooks and training."""
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The request callbacks' JSON records, by file stem (``request_records``)."""


def serve_request(
    trainer: Trainer,
    module: UnlearningModule,
    data: ConceptStreamDataModule,
    plan: RequestPlan,
    *,
    train_steps: int | None = None,
    cache_dir: Path | None = None,
    fit_callbacks: Sequence[Callback] = (),
    checkpoints: RequestCheckpoints | None = None,
    resume: ResumePoint | None = None,
    before_fit: Callable[[], None] | None = None,
    on_failure: Callable[[NonFiniteLossError, int], None] | None = None,
    commit: Callable[[ServedRequest], None] | None = None,
) -> ServedRequest:
    """Serve ``plan``'s request on ``trainer``: prepare it, train it, run the hooks, commit it.

    Args:
        trainer: the Trainer every request of a stream is served on (its ``max_steps`` is raised
            per request; its callbacks' ``on_request_start``/``on_request_end`` are called).
        module: the unlearning module; it starts from the base weights when ``plan.from_base``,
            else from the weights it holds.
        data: the stream's datamodule; it is given the plan (the same object the module keeps).
        plan: the request and what it trains (``lightning_unlearn.protocols.plan_request``).
        train_steps: the step cap (default: ``data.steps_per_request``).
        cache_dir: where the method may cache data across requests (the stream's ``.anchor_cache`` next to the run folder).
        fit_callbacks: callbacks for this request's ``fit`` only (removed after it, also on error).
        checkpoints: the request's mid-request checkpoint callback (added for this fit only); a
            pre-emption it saw stops the stream (:class:`StreamStopped`, requeue) before the end hooks.
        resume: resume the request from a mid-request checkpoint instead of its start.
        before_fit: called once the request is prepared, before training: a safe stop point.
        on_failure: called with the error and the (1-based) step at which the loss became
            non-finite, before the error propagates (the stream records it and raises its own).
        commit: called with the trained request after the end hooks (rank 0 of a stream saves,
            evaluates and records it); unset = nothing is written.

    Returns:
        The trained request (steps, seconds, callback records).

    Raises:
        StreamStopped: SIGTERM or Ctrl+C inside ``fit``, or a pre-emption; the request is not committed.
        NonFiniteLossError: the loss diverged (after ``on_failure``).
    """
    cap = int(train_steps) if train_steps is not None else data.steps_per_request
    start_step = resume.request_start_step if resume is not None else trainer.global_step
    served = ServedRequest(plan, cap, start_step)
    started = time.perf_counter()
    prepare_request(trainer, module, data, plan, cap, cache_dir)
    if before_fit is not None:
        before_fit()
    if module.method.training_free:
        # A closed-form edit (UCE) stands where fit would run: no optimizer step, nothing to
        # checkpoint mid-way (an interrupted edit is simply redone), steps stay 0.
        save_cli_config(trainer, module)
        module.apply_method_edit()
    else:
        per_fit = [*fit_callbacks, *([checkpoints] if checkpoints is not None else [])]
        try:
            fit_request(trainer, module, data, start_step + cap, per_fit, resume)
        except NonFiniteLossError as error:
            if on_failure is not None:
                on_failure(error, trainer.global_step - start_step + 1)
            raise
        _stop_if_fit_was_cut_short(trainer, plan, cap, checkpoints)
    for callback in request_callbacks(trainer):
        callback.on_request_end(trainer, module)
    for callback in request_callbacks(trainer):
        served.records.update(callback.request_records())
    # After every hook has seen the trained parameters (LoRA: fuses the request's adapter).
    module.end_request()
    served.steps = trainer.global_step - start_step
    served.train_seconds = time.perf_counter() - started
    to_training_device(trainer, module)
    if commit is not None:
        commit(served)
    return served


class CallbackNeedsTrainingError(SettingsError):
    """A callback that acts on a request's training was given a training-free method (UCE)."""


def check_callbacks_apply(trainer: Trainer, module: UnlearningModule) -> None:
    """Refuse, before any work, a request callback that acts on training when the method is
    training-free: it would silently do nothing (a penalty on no loss, a mask on no gradient)."""
    if not module.method.training_free:
        return
    method = type(module.method).__name__
    for callback in request_callbacks(trainer):
        if callback.acts_on_training is not None:
            raise CallbackNeedsTrainingError(
                f"--trainer.callbacks: {type(callback).__name__} does not apply to {method}, a training-free "
                f"closed-form edit with no optimizer step, and {callback.acts_on_training}; remove it "
                "(DriftRecorder and --stream.merge do apply)"
            )


def save_cli_config(trainer: Trainer, module: LightningModule) -> None:
    """Write the command's ``config.yaml`` as LightningCLI does when a fit starts (its
    SaveConfigCallback's ``setup`` hook, once): a training-free stream never fits, and export and
    report read the run's settings from that file."""
    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback):
            callback.setup(trainer, module, stage="fit")


def prepare_request(trainer: Trainer, module: UnlearningModule, data: ConceptStreamDataModule,
                    plan: RequestPlan, train_steps: int, cache_dir: Path | None = None) -> None:
    """Everything before a request's ``fit``: the seed, the start weights, the data position, the
    method's preparation (reference copy, per-request data) and the ``on_request_start`` hooks."""
    seed_everything(module.hparams.seed + plan.index, workers=True, verbose=False)
    to_training_device(trainer, module)
    if plan.from_base:
        module.load_trainable_state(module.base_state(), source="the base weights")
    data.begin_request(plan, train_steps)
    attach_datamodule(trainer, data)
    # The method's preparation runs under the trainer's precision (autocast for bf16-mixed), as training does.
    with trainer.precision_plugin.forward_context():
        module.begin_request(plan, data.training_captions(), vocabulary=data.vocabulary, cache_dir=cache_dir)
    for callback in request_callbacks(trainer):
        callback.on_request_start(trainer, module)


def fit_request(trainer: Trainer, module: LightningModule, data: LightningDataModule, max_steps: int,
                callbacks: Sequence[Callback] = (), resume: ResumePoint | None = None) -> None:
    """One request's ``fit`` on the shared Trainer, up to ``max_steps`` in total, with ``callbacks``
    added for this fit only; Lightning's ways out of an interrupted fit become :class:`StreamStopped`."""
    # Lightning has no public way to raise max_steps between two fits of one Trainer: the loop
    # reads it from the epoch loop at every step (Trainer(max_steps=...) only sets it there).
    trainer.fit_loop.epoch_loop.max_steps = max_steps
    # Callbacks for one fit: appended to the trainer's list (Lightning has no per-fit callbacks)
    # and removed however the fit ends, so the next request never sees them.
    trainer.callbacks.extend(callbacks)
    try:
        # weights_only: a checkpoint holds tensors and primitive containers, never code.
        trainer.fit(module, datamodule=data, ckpt_path=None if resume is None else resume.checkpoint,
                    weights_only=True)
    except SIGTERMException:  # Lightning's SIGTERM handling: a SystemExit with status 0
        raise StreamStopped(f"interrupted: {_not_committed(getattr(module, 'plan', None))}", EXIT_SIGTERM) from None
    except SystemExit as stop:
        # Lightning turns Ctrl+C inside fit into sys.exit(1) while handling the KeyboardInterrupt.
        if isinstance(stop.__context__, KeyboardInterrupt):
            raise StreamStopped(f"interrupted: {_not_committed(getattr(module, 'plan', None))}", EXIT_SIGINT) from None
        raise
    finally:
        for callback in callbacks:
            trainer.callbacks.remove(callback)


def _stop_if_fit_was_cut_short(trainer: Trainer, plan: RequestPlan, cap: int,
                               checkpoints: RequestCheckpoints | None) -> None:
    """:class:`StreamStopped` when the fit ended before its steps for a reason other than a
    callback's decision: a pre-emption (checkpointed: requeue) or an interruption Lightning swallowed."""
    if checkpoints is not None and checkpoints.preempted_at is not None:
        raise StreamStopped(
            f"the re-run resumes at request {plan.index + 1} ({plan.request.concept}), step "
            f"{checkpoints.preempted_at} of {cap}", EXIT_PREEMPTED, requeue=True,
        )
    if trainer.interrupted:
        raise StreamStopped(f"interrupted: {_not_committed(plan)}", EXIT_SIGTERM)


def _not_committed(plan: RequestPlan | None) -> str:
    number = "the request" if plan is None else f"request {plan.index + 1}"
    return f"{number} was not committed; re-run the same command to resume"


def attach_datamodule(trainer: Trainer, data: LightningDataModule) -> None:
    """Make ``data`` the trainer's datamodule before ``fit`` attaches it: request callbacks read
    the vocabulary from ``trainer.datamodule`` in ``on_request_start``, which for the first
    request comes before any ``fit``. (``Trainer.datamodule`` is a plain attribute ``fit`` sets.)"""
    trainer.datamodule = data


def to_training_device(trainer: Trainer, module: LightningModule) -> None:
    """Move ``module`` to the device training runs on. Lightning's teardown moves the module to
    the CPU after every ``fit``; the work between fits (base evaluation, the reference copy, the
    method's per-request data, the commit's evaluation) must run where training runs."""
    module.to(trainer.strategy.root_device)


def use_checkpoint_io(trainer: Trainer, checkpoint_io: CheckpointIO) -> None:
    """Make the strategy write and read checkpoints through ``checkpoint_io`` (the stream's
    atomic, weights-only one); Lightning takes a CheckpointIO only as a plugin at construction."""
    trainer.strategy.checkpoint_io = checkpoint_io


def disable_lightning_auto_requeue(trainer: Trainer) -> None:
    """Stop Lightning's SLURM plugin from handling SIGUSR1 itself (saving ``hpc_ckpt_*.ckpt`` and
    requeueing): the stream's own handler replaces it. Lightning's signal connector reads the
    flag on the cluster environment at every fit; the environment is reachable only through the
    accelerator connector (a private attribute)."""
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment):
        environment.auto_requeue = False
