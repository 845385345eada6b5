"""The stream: serve unlearning requests one after another, evaluating after each.

``python train.py unlearn --config configs/tinyworld/esd_styles_sequential.yaml``

For request k the runner plans it (:func:`lightning_unlearn.protocols.plan_request`), serves it
with :func:`lightning_unlearn.serving.serve_request` (data position, method preparation, request
hooks, ``steps_per_request`` optimizer steps on the one Trainer, so that the user's callbacks
and logger persist across requests, end hooks), and commits it into the run folder
(:mod:`lightning_unlearn.run_folder` owns its format)::

    requests/00-base/{metrics.json, grid.png}
    requests/NN-<concept>/{weights.safetensors, metrics.json, grid.png}
    ledger.json  results.csv  results.json  tensorboard/

Every file is written atomically; ``ledger.json`` says which requests are complete (with the
weights' sha256), and re-running the same command continues after the last complete one --
inside it, from ``checkpoints/`` when ``--stream.checkpoint_every_n_steps`` is set
(:mod:`lightning_unlearn.request_checkpoints`). A non-finite loss stops the request without
committing it (``FAILED.json``, :class:`RequestFailedError`). SIGUSR1 (a SLURM pre-emption or
time limit) stops the stream at its next safe point, checkpointed, and requeues the job; SIGTERM /
SIGINT inside training exit 143 / 130 with the request uncommitted
(:mod:`lightning_unlearn.preemption`). Evaluation and its logging: :mod:`lightning_unlearn.stream_evaluation`.
"""

from __future__ import annotations

import signal
from argparse import ArgumentError
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lightning_unlearn.atomic_io import remove_stale_temporaries, save_weights, write_json
from lightning_unlearn.attacks.runner import AttackRunner, attack_summary
from lightning_unlearn.attacks.settings import ATTACK_NAMES, AttackSettings
from lightning_unlearn.backbone import backbone_label
from lightning_unlearn.callbacks.base import request_callbacks
from lightning_unlearn.checks import at_least
from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.errors import SettingsError, UnlearnError
from lightning_unlearn.evaluation import EvaluationSettings
from lightning_unlearn.preemption import (
    EXIT_PREEMPTED, PreemptionSignal, StreamStopped, requeue, stray_hpc_checkpoints,
)
from lightning_unlearn.progress import StreamProgress, quiet_lightning_banners
from lightning_unlearn.protocols import (
    MergeSettings, ProtocolName, RequestPlan, SimultaneousSettings, plan_request, protocol_label,
)
from lightning_unlearn.request_checkpoints import AtomicCheckpointIO, RequestCheckpoints, clear_checkpoints, latest_checkpoint
from lightning_unlearn.lora import refuse_callbacks_without_lora_support, save_adapter
from lightning_unlearn.run_folder import (
    ADAPTER_CONFIG_FILE, ADAPTER_FILE, ATTACKS_FILE, FAILED_FILE, MANIFEST_FILE, MERGED_FILE, METRIC_COLUMNS, METRICS_FILE,
    WEIGHTS_FILE, RunFolder, RunFolderBusyError,
    check_run_dir, result_row,
)
from lightning_unlearn.semantic_analysis import analyse_request
from lightning_unlearn.serving import (
    ResumePoint, ServedRequest, attach_datamodule, check_callbacks_apply, disable_lightning_auto_requeue, serve_request,
    to_training_device, use_checkpoint_io,
)
from lightning_unlearn.stream_evaluation import StreamEvaluation, UATargetStop, build_evaluator, check_scorable
from lightning_unlearn.unlearning_module import UnlearningModule

__all__ = ["NoCommittedRequestError", "RequestFailedError", "RunFolderBusyError", "StrayHpcCheckpointError", "StreamRunner",
           "StreamSettings", "UnlearnCLI", "attack", "check_run_dir", "unlearn"]


class StrayHpcCheckpointError(UnlearnError, RuntimeError):
    """A Lightning HPC checkpoint (``hpc_ckpt_*.ckpt``) lies where Lightning would restore it into
    every request's ``fit``; the stream resumes from its ledger and ``checkpoints/`` only."""


class RequestFailedError(UnlearnError, RuntimeError):
    """A request was stopped (non-finite loss) and not committed; the run folder keeps the
    last good state and records the failure (``FAILED.json``, the ledger's ``failed`` list)."""


@dataclass
class StreamSettings:
    """Where a stream writes and how it evaluates."""

    run_dir: str = "runs/stream"
    """Run folder (created; re-running on it resumes)."""
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    """How every checkpoint is evaluated."""
    protocol: ProtocolName = "sequential"
    """``sequential`` (from the previous request's weights), ``simultaneous`` (from the base,
    all requests so far together, until a UA target) or ``independent`` (each alone from the base)."""
    simultaneous: SimultaneousSettings = field(default_factory=SimultaneousSettings)
    """The simultaneous protocol's stopping rule."""
    merge: MergeSettings | None = None
    """Independent protocol only: evaluate, after request k, the merge of requests 1..k."""
    evaluate_every: int = 1
    """Evaluate after every n-th request (and always after the last); 1 = after each. Requests
    in between are committed (weights, ledger) with empty metrics."""
    semantic_analysis: bool = True
    """After each request, relate every retained concept's similarity to the target to its
    accuracy drop and K/V change (``semantic.json``). With ``evaluate_every`` > 1 the accuracies
    come from a fixed subset of the evaluation prompts (one seed, about a quarter of the
    style x object grid, every concept covered) sampled before and after each request."""
    checkpoint_every_n_steps: int | None = None
    """Save a Lightning checkpoint every n optimizer steps of a request into
    ``<run_dir>/checkpoints/`` (atomic; removed once the request is committed), so that a
    re-run resumes an interrupted request at its last checkpoint; unset = resume interrupted
    requests from their start. A pre-emption (SIGUSR1) checkpoints the request at its current
    step either way."""
    attacks: AttackSettings = field(default_factory=AttackSettings)
    """Adversarial recovery after each committed request (``--stream.attacks.names=[relearn,
    embedding, prompt]``): ``attacks.json`` in the request's folder, ASR columns in the results."""
    progress: bool = True
    """Show the stream's live view on stderr (request i of N, step k of the request, elapsed
    and estimated time left, the last request's UA / IRA / CRA): one redrawn line in a terminal,
    plain lines at coarse points in a log file. Off when false, or when the user turns on
    Lightning's own bar (``--trainer.enable_progress_bar=true``)."""

    def __post_init__(self) -> None:
        check_run_dir(self.run_dir)
        at_least(self.evaluate_every, 1, "--stream.evaluate_every")
        if not isinstance(self.progress, bool):  # a dataclass built in Python bypasses the parser's typing
            raise SettingsError(f"--stream.progress must be true or false, got {self.progress!r}")
        if self.checkpoint_every_n_steps is not None:
            at_least(self.checkpoint_every_n_steps, 1, "--stream.checkpoint_every_n_steps")
        if self.merge is not None and self.protocol != "independent":
            raise SettingsError(
                "--stream.merge combines independently unlearned checkpoints: it needs protocol 'independent' "
                f"(--stream.protocol=independent), not {self.protocol!r}"
            )


class StreamRunner:
    """Drives one Trainer through every request of a ConceptStreamDataModule, into a run folder."""

    def __init__(self, trainer: Trainer, module: UnlearningModule, data: ConceptStreamDataModule, settings: StreamSettings) -> None:
        """Checks what needs the settings together (the protocol with the requests, the method
        with the vocabulary) and raises a named error before any work or file."""
        self.trainer, self.module, self.data, self.settings = trainer, module, data, settings
        plan_request(data.requests, 0, settings.protocol, settings.merge is not None)
        module.method.check_stream(module.backbone, data.requests, data.vocabulary)
        refuse_callbacks_without_lora_support(module.trainable, request_callbacks(trainer))
        check_callbacks_apply(trainer, module)
        check_scorable(module, data.vocabulary, settings.evaluation)
        self.folder = RunFolder(settings.run_dir)
        self.run_dir = self.folder.path
        self.domains = {r.kind for r in data.requests}
        self.evaluation: StreamEvaluation | None = None
        """The evaluation (built once the stream starts serving; in every process of a DDP job,
        each sampling its share; rank 0 writes)."""
        self.attacks: AttackRunner | None = None
        """Rank 0's attacks (``--stream.attacks``; ``None`` when off or on other ranks)."""
        self.ledger: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        """The results table so far (``results.json``'s rows)."""
        self.progress = self._progress_display()
        """Rank 0's live view (:mod:`lightning_unlearn.progress`); ``None`` when off or on other ranks."""

    def _progress_display(self) -> StreamProgress | None:
        """The config's StreamProgress if it lists one, else a new one added to the trainer,
        unless ``--stream.progress=false`` or Lightning's own progress bar is on (the user's choice)."""
        listed = [cb for cb in self.trainer.callbacks if isinstance(cb, StreamProgress)]
        if not self.settings.progress or self.trainer.progress_bar_callback is not None:
            # Two displays would fight over the terminal line; a listed one stays silent.
            for callback in listed:
                self.trainer.callbacks.remove(callback)
            return None
        if listed:
            return listed[0] if self.trainer.is_global_zero else None
        progress = StreamProgress()
        self.trainer.callbacks.append(progress)
        return progress if self.trainer.is_global_zero else None

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` says about this run (read by reports and the study runner)."""
        kinds = sorted(self.domains)
        simultaneous = self.settings.simultaneous if self.settings.protocol == "simultaneous" else None
        return {
            "label": self.run_dir.name,
            "protocol": self.settings.protocol,
            "protocol_label": protocol_label(self.settings.protocol, self.settings.merge, simultaneous),
            "merge": asdict(self.settings.merge) if self.settings.merge is not None else None,
            "method": type(self.module.method).__name__,
            # The denoiser's architecture and training objective: UNet2DConditionModel (epsilon),
            # CrossAttentionDiT, 8 blocks (flow-matching)...; a transformer's depth is named so a
            # report tells the tiny world's two DiTs (and real ones) apart.
            "backbone": backbone_label(self.module.unet, self.module.backbone.objective.name),
            "trainable": self.module.trainable,
            # Each callback's label, class and settings (callbacks.base.RequestCallback.label).
            "callbacks": [cb.run_info_entry() for cb in request_callbacks(self.trainer)],
            "evaluate_every": self.settings.evaluate_every,
            "semantic_analysis": self.settings.semantic_analysis,
            "domain": kinds[0] if len(kinds) == 1 else "mixed",
            "requests": [vars(r) for r in self.data.requests],
            "steps_per_request": self.data.steps_per_request,
            "simultaneous": asdict(self.settings.simultaneous) if self.settings.protocol == "simultaneous" else None,
        }

    # -- the stream ----------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Serve every request not yet complete; returns the results table. The run folder is
        locked against other processes meanwhile (released on return or error), and the
        logger's writer the evaluation reopened is closed at the end."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.trainer.is_global_zero:  # the other ranks of a DDP job share the folder with rank 0
            self.folder.lock()
        self._take_over_preemption()
        try:
            return self._serve_stream()
        finally:
            if self.progress is not None:
                self.progress.finish()
            self.preemption.restore()
            if self.evaluation is not None:
                self.evaluation.close()
            self.folder.unlock()

    def _serve_stream(self) -> list[dict[str, Any]]:
        """Resume the run folder's state, evaluate the base model once, serve the remaining requests."""
        completed = self._start()
        if completed == len(self.data.requests):
            rank_zero_info(f"{self.run_dir}: all {completed} requests are already complete; nothing to do")
            return self.rows
        if self.trainer.is_global_zero:
            self.folder.write_run_info(self.describe())
        self._resume_callbacks(completed)
        self._resume_weights(completed)
        # Request callbacks read the vocabulary from trainer.datamodule in on_request_start.
        attach_datamodule(self.trainer, self.data)
        if self.progress is not None:
            total, every = len(self.data.requests), max(1, self.settings.evaluate_every)
            self.progress.start_stream(total, completed, self._step_cap(), [(i + 1) % every == 0 or i + 1 == total for i in range(total)],
                                       device=str(self.trainer.strategy.root_device))
        evaluator = build_evaluator(self.module, self.data.vocabulary, self.settings.evaluation)
        self.evaluation = StreamEvaluation(self.trainer, self.module, evaluator, self.data.vocabulary,
                                           self.domains, self.folder)
        if self.settings.attacks.enabled and self.trainer.is_global_zero:
            self.attacks = AttackRunner(self.settings.attacks, evaluator, self.module.frozen_base_copy)
        if "base" not in self.ledger:  # every process read the same ledger
            self._evaluate_base()
        for index in range(completed, len(self.data.requests)):
            # Only the first unfinished request can have been interrupted mid-way.
            self._serve(index, resumable=index == completed)
        return self.rows

    def _start(self) -> int:
        """Read (and verify) the ledger and results, take over checkpoint IO, tidy what an
        interrupted run left; returns how many requests are committed."""
        plan_request(self.data.requests, 0, self.settings.protocol, self.settings.merge is not None)
        # Work outside fit (base evaluation, x_t banks) runs where training will run.
        to_training_device(self.trainer, self.module)
        self.ledger = self.folder.load_ledger(self.data.requests)  # verified before anything is written
        if self.trainer.is_global_zero:
            self.folder.write_settings(asdict(self.settings))
        self.rows = self.folder.read_results()
        completed = len(self.ledger["completed"])
        # Mid-request checkpoints go through atomic, weights-only IO; committed requests' are stale.
        self.checkpoint_io = AtomicCheckpointIO()
        use_checkpoint_io(self.trainer, self.checkpoint_io)
        if self.trainer.is_global_zero:
            for done in range(completed):
                clear_checkpoints(self.run_dir, done)
            # A process killed inside an atomic write leaves its complete-but-unrenamed temporary file.
            for stale in remove_stale_temporaries(self.run_dir):
                rank_zero_info(f"removed {stale}, left by an interrupted write")
        return completed

    def _resume_callbacks(self, completed: int) -> None:
        """After ``completed`` committed requests, give callbacks what they carry from request to
        request (e.g. inverse-EWC's running Fisher), whatever the protocol: the process that
        served the earlier requests is gone."""
        if not completed:
            return
        carried = self.folder.carried_states(self.ledger["completed"][-1])
        for callback in request_callbacks(self.trainer):
            if callback.state_key in carried:
                callback.load_carried_state(carried[callback.state_key])

    def _resume_weights(self, completed: int) -> None:
        """After ``completed`` committed requests: the sequential protocol continues from the last
        request's (verified) weights; the others start every request from the base."""
        if completed and self.settings.protocol == "sequential":
            last = self.ledger["completed"][-1]
            self.module.load_trainable_state(self.folder.verified_weights(last), source=self.run_dir / last["weights"])
            rank_zero_info(f"resuming {self.run_dir} after request {completed}: {last['concept']}")
        elif completed:
            rank_zero_info(f"resuming {self.run_dir} at request {completed + 1} ({self.settings.protocol}: it starts from the base)")

    def _evaluate_base(self) -> None:
        """Evaluate the base model (row 0 of the results) and record its metrics in the ledger.
        Rank 0's alone: it comes before the first ``fit``, which starts (or joins) the other
        processes of a DDP job; every later evaluation is shared."""
        if not self.evaluation.takes_part():
            return
        base_dir = self.folder.request_dir(0, None)
        metrics, seconds = self.evaluation.evaluate([], base_dir, step=0, base=True)
        if not self.trainer.is_global_zero:
            return
        self.rows = [result_row(0, None, metrics, 0, 0, 0.0, seconds)]
        self.ledger["base"] = {}
        self.folder.record_file(self.ledger["base"], "metrics", base_dir / METRICS_FILE)
        self.folder.write_results(self.rows)
        self.folder.write_ledger(self.ledger)

    def _serve(self, index: int, resumable: bool) -> None:
        """Plan request ``index`` and serve it (:func:`serve_request`), committing it on rank 0."""
        settings, protocol = self.settings, self.settings.protocol
        plan = plan_request(self.data.requests, index, protocol, settings.merge is not None,
                            erased_before=self.data.erased_before)
        request = plan.request
        where = f"request {index + 1} ({request.concept})"
        self._stop_if_preempted(where)
        what = request.concept if len(plan.erasing) == 1 else f"{len(plan.erasing)} concepts up to {request.concept!r}"
        cap = self._step_cap()
        if self.progress is not None:  # the live view announces the request (one line, not two)
            self.progress.start_request(index, request.concept, cap, self.trainer.global_step,
                                        what=f"{protocol}, unlearn {request.kind} {what}")
        else:
            rank_zero_info(f"request {index + 1}/{len(self.data.requests)} ({protocol}): unlearn {request.kind} {what}")
        identity = self._checkpoint_identity(plan, cap)
        resume = self._resume_point(index, identity, cap) if resumable else None
        start_step = resume.request_start_step if resume is not None else self.trainer.global_step
        if self.progress is not None:
            self.progress.start_step = start_step  # a resumed request counts its steps from its first start
        stopper = None
        if protocol == "simultaneous" and cap:  # a training-free edit has no steps to stop
            stopper = UATargetStop(self.evaluation.evaluator, list(plan.erasing), settings.simultaneous,
                                   self.data.vocabulary, self.domains, first_step=start_step)
        # Always there: it also checkpoints the step at which a pre-emption stops the request.
        saver = RequestCheckpoints(self.run_dir, settings.checkpoint_every_n_steps or None, index, identity,
                                   start_step, self.checkpoint_io, preemption=self.preemption)

        def commit(served: ServedRequest) -> None:
            if stopper is not None:
                served.records["simultaneous"] = stopper.record()
            self._commit(served)  # in every process: they share the evaluation
            if not self.trainer.is_global_zero:  # ranks other than 0 write nothing
                return
            # Committed: its mid-request checkpoints and any earlier failure record are history.
            clear_checkpoints(self.run_dir, index)
            self.folder.clear_failure(index, request)

        serve_request(
            self.trainer, self.module, self.data, plan, train_steps=cap, cache_dir=self.folder.anchors,
            fit_callbacks=[stopper] if stopper is not None else [], checkpoints=saver, resume=resume,
            # After the preparation: the method's data (e.g. ESD's x_t bank) is rebuilt from the seed on re-run.
            before_fit=lambda: self._stop_if_preempted(where),
            on_failure=lambda error, step: self._fail(plan, error, step, cap),
            commit=commit,
        )
        self.trainer.strategy.barrier()

    def _step_cap(self) -> int:
        """Optimizer steps a request may take: the simultaneous cap or ``steps_per_request``; 0 for a
        training-free method (UCE), whose closed-form edit takes none."""
        if self.module.method.training_free:
            return 0
        if self.settings.protocol == "simultaneous":
            return self.settings.simultaneous.max_steps
        return self.data.steps_per_request

    def _resume_point(self, index: int, identity: dict[str, Any], cap: int) -> ResumePoint | None:
        """Where request ``index`` resumes: its newest mid-request checkpoint, if any."""
        found = latest_checkpoint(self.run_dir, index, identity)
        if found is None:
            return None
        path, record = found
        rank_zero_info(f"  resuming at step {record['steps_done']} of {cap} from {path}")
        # The checkpoint restores global_step as the interrupted process counted it.
        return ResumePoint(path, int(record["request_start_step"]))

    def _checkpoint_identity(self, plan: RequestPlan, cap: int) -> dict[str, Any]:
        """What a mid-request checkpoint must agree on with the request resuming from it."""
        return {
            "concept": plan.request.concept, "kind": plan.request.kind, "protocol": self.settings.protocol,
            "erasing": [r.concept for r in plan.erasing], "train_steps": cap, "batch_size": self.data.batch_size,
            "world_size": self.trainer.world_size, "accumulate_grad_batches": self.trainer.accumulate_grad_batches,
            # Restoring the checkpoint brings back its optimizer's hyperparameters over these:
            # a changed --model.lr would otherwise be ignored for the rest of the request.
            **{f"optimizer.{k}": v for k, v in self.module.optimizer_settings().items()},
        }

    # -- pre-emption ---------------------------------------------------------------------------
    def _take_over_preemption(self) -> None:
        """Handle SIGUSR1 ourselves (:mod:`lightning_unlearn.preemption`) and refuse any Lightning HPC
        checkpoint: on SLURM Lightning restores the newest ``hpc_ckpt_*.ckpt`` of ``default_root_dir``
        whenever ``fit`` gets no ``ckpt_path``, i.e. into every request that starts fresh."""
        stray = stray_hpc_checkpoints(self.run_dir, self.trainer.default_root_dir)
        if stray:
            raise StrayHpcCheckpointError(
                f"{', '.join(map(str, stray))}: a Lightning HPC checkpoint, which Lightning would restore into every "
                "request on SLURM; this stream never writes or reads one (it resumes from ledger.json and "
                "checkpoints/ only): delete it and re-run the same command"
            )
        disable_lightning_auto_requeue(self.trainer)
        self.preemption = PreemptionSignal()
        self.preemption.install()

    def _stop_if_preempted(self, resumes_at: str) -> None:
        """At a safe point outside ``fit``: stop if SIGUSR1 arrived (on any rank), saying where the
        re-run resumes."""
        if self.trainer.strategy.reduce_boolean_decision(self.preemption.requested, all=False):
            raise StreamStopped(f"the re-run resumes at {resumes_at}", EXIT_PREEMPTED, requeue=True)

    # -- commit --------------------------------------------------------------------------------
    def _fail(self, plan: RequestPlan, error: Exception, step: int, cap: int) -> None:
        """Record that the request stopped at ``step`` and raise :class:`RequestFailedError`.

        Nothing of the request is committed: the run folder keeps the previous requests'
        weights. Its mid-request checkpoints are removed: resumed, they would bring back the
        optimizer state (learning rate included) that diverged.
        """
        index, request = plan.index, plan.request
        failure = {**vars(request), "index": index + 1, "step": step, "train_steps": cap,
                   "protocol": self.settings.protocol, "reason": str(error),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if self.trainer.is_global_zero:
            clear_checkpoints(self.run_dir, index)
            self.folder.record_failure(self.ledger, index, request, failure)
        last = f"request {index}'s" if self.ledger["completed"] else "the base model's"
        raise RequestFailedError(
            f"request {index + 1} ({request.kind} {request.concept!r}) stopped at step {step} of {cap}: {error}. "
            f"Nothing of it was committed ({self.run_dir} keeps {last} weights; the failure is in "
            f"{self.folder.request_dir(index, request) / FAILED_FILE}): fix the configuration (e.g. a smaller learning "
            "rate) and re-run the same command to retry the request from its start"
        ) from error

    def _commit(self, served: ServedRequest) -> None:
        """Save, evaluate and record a served request; the ledger entry is written last. Every
        process evaluates its share; rank 0 alone writes."""
        plan = served.plan
        index, request = plan.index, plan.request
        out = self.folder.request_dir(index, request)
        entry = self._save_weights(plan, out)
        if entry is not None:
            self.folder.save_carried_states(entry, out, {
                cb.state_key: state for cb in request_callbacks(self.trainer) if (state := cb.carried_state())})
        records = served.records
        last = index + 1 == len(self.data.requests)
        if not last and (index + 1) % max(1, self.settings.evaluate_every):
            metrics, eval_seconds = dict.fromkeys(METRIC_COLUMNS, float("nan")), 0.0
        else:
            metrics, eval_seconds = self.evaluation.evaluate(list(plan.scored_erased), out, step=index + 1)
        if entry is None:  # not rank 0
            return
        if self.settings.semantic_analysis:
            records["semantic"] = self._semantic_analysis(plan, metrics)
        for stem, record in records.items():
            write_json(record, out / f"{stem}.json")
        attack_columns = self._attack(plan, entry, out) if self.attacks is not None else {}
        cumulative = (self.rows[-1]["cumulative_steps"] if self.rows else 0) + served.steps
        row = result_row(index + 1, request, metrics, served.steps, cumulative, served.train_seconds, eval_seconds)
        if "drift" in records:
            row["drift_to_base"] = records["drift"]["to_base"]["total"]
            row["drift_to_previous"] = records["drift"]["to_previous"]["total"]
        if "semantic" in records:
            row["similarity_drop_r"] = records["semantic"]["pearson_similarity_drop"]
        row.update(attack_columns)
        self.rows = [*self.rows, row]
        self.folder.write_results(self.rows)
        if "per_style" in metrics:
            self.folder.record_file(entry, "metrics", out / METRICS_FILE)
        self.ledger["completed"].append(entry)
        self.folder.write_ledger(self.ledger)
        if self.progress is not None:  # its request-end line carries the same metrics and timings
            self.progress.end_request(row)
            return
        rank_zero_info(
            "  UA {UA:.1f}  UA_latest {UA_latest:.1f}  IRA {IRA:.1f}  CRA {CRA:.1f}  "
            "({train_steps} steps, {train_seconds:.0f}s train, {eval_seconds:.0f}s eval)".format(**row)
        )

    def _semantic_analysis(self, plan: RequestPlan, metrics: dict[str, Any]) -> dict[str, Any]:
        """The request's semantic analysis (``semantic.json``). It compares per-concept accuracy
        before and after the request: from the full evaluations when the request and the model
        it started from were both evaluated, else (``--stream.evaluate_every`` > 1) from the
        fixed subset of prompts both models are sampled on now (``StreamEvaluation.subset_scores``),
        whose size and cost the record states."""
        before = None
        if "per_style" in metrics:
            before = self.folder.metrics_of(self.ledger, 0 if plan.from_base else plan.index)
        if before is not None and "per_style" in before:
            after, scored_on = metrics, {"prompts": "full evaluation"}
        else:
            started = time.perf_counter()
            before, items = self.evaluation.subset_scores(self.module.reference_unet)
            after, _ = self.evaluation.subset_scores(self.module.unet)
            scored_on = {"prompts": "subset", "images_per_model": items, "seconds": round(time.perf_counter() - started, 2),
                         "why": "the request or the model it started from was not evaluated (--stream.evaluate_every)"}
        record = analyse_request(self.module.backbone, self.data.vocabulary, self.module.reference_unet, self.module.unet,
                                 list(plan.erasing), list(plan.scored_erased), before, after)
        return {**record, "scored_on": scored_on}

    def attack_committed(self) -> list[int]:
        """``train.py attack``: attack every committed request whose ledger entry records no
        ``attacks.json`` (its deployed weights loaded into the module, verified), writing it, the
        results columns and the ledger after each request: a killed run resumes with the next
        unattacked one. Returns the request numbers attacked."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.folder.lock()
        try:
            to_training_device(self.trainer, self.module)
            self.ledger = self.folder.load_ledger(self.data.requests)
            self.rows = self.folder.read_results()
            evaluator = build_evaluator(self.module, self.data.vocabulary, self.settings.evaluation)
            self.attacks = AttackRunner(self.settings.attacks, evaluator, self.module.frozen_base_copy)
            attacked = []
            for position, entry in enumerate(self.ledger["completed"]):
                if "attacks" in entry:
                    continue
                plan = plan_request(self.data.requests, position, self.settings.protocol,
                                    self.settings.merge is not None, erased_before=self.data.erased_before)
                key = "merged" if "merged" in entry else "weights"
                self.module.load_trainable_state(self.folder.verified_weights(entry, key), source=self.run_dir / entry[key])
                rank_zero_info(f"attacking request {position + 1} ({entry['concept']})")
                columns = self._attack(plan, entry, self.folder.request_dir(position, plan.request))
                self.rows = [{**row, **columns} if row["request"] == position + 1 else row for row in self.rows]
                self.folder.write_results(self.rows)
                self.folder.write_ledger(self.ledger)
                attacked.append(position + 1)
            return attacked
        finally:
            self.folder.unlock()

    def _attack(self, plan: RequestPlan, entry: dict[str, Any], out: Any) -> dict[str, Any]:
        """Attack the model just saved (a copy of it: its weights stay as committed), write
        ``attacks.json`` and record it in the request's ledger ``entry``; returns the results
        columns. Part of the commit: a process killed here re-serves the request, and the
        attacks, deterministic, give the same record."""
        targets = [plan.request] if self.settings.attacks.targets == "latest" else list(plan.scored_erased)
        if plan.request not in targets:
            targets.append(plan.request)
        record = self.attacks.attack(self.module.unet, targets)
        write_json(record, out / ATTACKS_FILE)
        self.folder.record_file(entry, "attacks", out / ATTACKS_FILE)
        return attack_summary(record, plan.request)

    def _save_weights(self, plan: RequestPlan, out: Any) -> dict[str, Any] | None:
        """Write the request's weights (and its adapter with LoRA; merging, the merge of requests
        1..k, which the module then holds for the evaluation, in every process) and its manifest;
        returns its ledger entry (``None`` on ranks other than 0, which write nothing)."""
        merged = None
        entry = None
        if self.trainer.is_global_zero:
            trained = {k: v.detach().cpu() for k, v in self.module.trainable_state().items()}
            sha = save_weights(trained, out / WEIGHTS_FILE)
            entry = self.folder.ledger_entry(plan.index, plan.request, sha)
            manifest = {"request": vars(plan.request), "index": plan.index + 1, "protocol": self.settings.protocol,
                        "erasing": [r.concept for r in plan.erasing], "trainable": self.module.trainable,
                        "keys": len(self.module.weight_keys), "sha256": sha}
            if self.module.lora is not None and self.module.last_adapter is not None:
                # The request's own adapter beside its fused weights (docs/lora.md).
                adapter_sha = save_adapter(self.module.last_adapter, self.module.lora, out / ADAPTER_FILE,
                                           out / ADAPTER_CONFIG_FILE)
                manifest["adapter_sha256"] = self.folder.record_file(entry, "adapter", out / ADAPTER_FILE, adapter_sha)
                manifest["lora"] = self.module.lora.describe()
            if self.settings.merge is not None:
                # The deployed model after request k: the merge of the task vectors of requests 1..k.
                earlier = [self.folder.verified_weights(e) for e in self.ledger["completed"]]
                merged = self.settings.merge.merge(self.module.base_state(), [*earlier, trained])
                merged_sha = save_weights(merged, out / MERGED_FILE)
                manifest["merged_sha256"] = self.folder.record_file(entry, "merged", out / MERGED_FILE, merged_sha)
                manifest["merge"] = asdict(self.settings.merge)
            write_json(manifest, out / MANIFEST_FILE)
        if self.settings.merge is not None:
            # Every process evaluates the merge: rank 0's (it alone holds the ledger's weights).
            merged = self.trainer.strategy.broadcast(merged, src=0)
            self.module.load_trainable_state(merged, source=out / MERGED_FILE)
        return entry


class UnlearnCLI(LightningCLI):
    """LightningCLI for streams: ``--model`` (UnlearningModule), ``--data``
    (ConceptStreamDataModule), ``--trainer`` (callbacks stack with ``--trainer.callbacks+=``),
    and ``--stream`` (run folder, evaluation)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(StreamSettings, "stream")

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        run_dir = cfg.stream.run_dir
        check_run_dir(run_dir)  # before any model is loaded
        if cfg.stream.get("progress", True) and cfg.trainer.get("enable_progress_bar") is None:
            # Lightning's bar is on unless told otherwise; the stream's view replaces it. A user's
            # explicit --trainer.enable_progress_bar=true keeps Lightning's bar (and no view).
            cfg.trainer.enable_progress_bar = False
        if cfg.trainer.get("default_root_dir") is None:
            cfg.trainer.default_root_dir = run_dir
        if cfg.trainer.get("logger") in (None, True):
            cfg.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=run_dir, name="tensorboard", version=""),
            )


class NoCommittedRequestError(UnlearnError, ValueError):
    """``train.py attack RUN_DIR`` on a run folder whose ledger commits no request yet."""


def attack(args: list[str]) -> list[int]:
    """``train.py attack RUN_DIR [--stream.attacks.* ...]``: attack the committed requests of an
    existing run folder that have no ``attacks.json`` yet (all three attacks unless
    ``--stream.attacks.names`` says otherwise), with the run's own ``config.yaml``."""
    if not args or args[0].startswith("-"):
        raise SettingsError("attack: give the run folder first: train.py attack RUN_DIR [--stream.attacks.names=[...] ...]")
    run_dir, options = args[0], args[1:]
    folder = RunFolder(run_dir)
    if not folder.ledger_path.is_file():
        raise NoCommittedRequestError(f"{folder.path} has no ledger.json: it is not a run folder, or no request "
                                      "was ever committed there (run train.py unlearn first)")
    ledger = folder.verified_ledger()
    if not ledger["completed"]:
        raise NoCommittedRequestError(f"{folder.path} has no committed request yet: nothing to attack")
    config = folder.config_path()
    if config is None:
        raise SettingsError(f"{folder.path} has no config.yaml: the run's model and evaluation are unknown")
    if not any(option.startswith("--stream.attacks.names") for option in options):
        options = [f"--stream.attacks.names=[{', '.join(ATTACK_NAMES)}]", *options]
    with quiet_lightning_banners():
        cli = UnlearnCLI(
            UnlearningModule, ConceptStreamDataModule, run=False,
            args=["--config", str(config), f"--stream.run_dir={run_dir}", "--trainer.logger=false",
                  "--stream.progress=false", *options],
            trainer_defaults={"enable_checkpointing": False, "enable_model_summary": False},
            save_config_callback=None, parser_kwargs={"allow_abbrev": False},
        )
        runner = StreamRunner(cli.trainer, cli.model, cli.datamodule, cli.config_init.stream)
        attacked = runner.attack_committed()
    print(f"{folder.path}: attacked requests {attacked}" if attacked
          else f"{folder.path}: every committed request already has its attacks.json; nothing to do")
    return attacked


def unlearn(args: list[str]) -> list[dict[str, Any]]:
    """Parse ``args`` as the ``unlearn`` subcommand and run the stream."""
    # Lightning's per-fit banners are folded into the live view; only for this command.
    with quiet_lightning_banners():
        return _unlearn(args)


def _unlearn(args: list[str]) -> list[dict[str, Any]]:
    cli = UnlearnCLI(
        UnlearningModule,
        ConceptStreamDataModule,
        run=False,
        args=args,
        trainer_defaults={
            "enable_checkpointing": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
            "enable_model_summary": False,
        },
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        # A misspelled option must be an error, not the prefix of a real one (--data.batch=4).
        parser_kwargs={"allow_abbrev": False},
    )
    settings: StreamSettings = cli.config_init.stream  # jsonargparse instantiates the dataclasses
    runner = StreamRunner(cli.trainer, cli.model, cli.datamodule, settings)  # checks, before any file
    try:
        return runner.run()
    except StreamStopped as stopped:
        # The run folder is consistent and unlocked here: everything is written before the line.
        if stopped.requeue:
            if cli.trainer.is_global_zero:
                # scontrol requeue ends this job (SIGTERM): nothing is left to do but say so.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                print(f"pre-empted: {requeue()}; {stopped.message}", file=sys.stderr, flush=True)
        elif cli.trainer.is_global_zero:
            print(stopped.message, file=sys.stderr, flush=True)
        raise SystemExit(stopped.exit_code) from None


class _Parsed(Exception):
    """Raised by :class:`_ParseOnlyCLI` once the arguments are parsed: nothing is built."""


class _ParseOnlyCLI(UnlearnCLI):
    """``train.py unlearn``'s parser, stopped before anything is instantiated or written."""

    def _set_seed(self) -> None:  # no "Seed set to" line, no global seed changed
        pass

    def before_instantiate_classes(self) -> None:
        raise _Parsed()


def unlearn_argument_problem(args: list[str]) -> str | None:
    """Whether ``train.py unlearn ARGS`` parses: ``None`` if it does, else the parser's complaint
    in one line (``unrecognized arguments: --data.foo=1``; for a class's unknown init argument,
    the line naming it). Parses only: no model is loaded, no folder or file is touched, so a
    study can check its runs' arguments before any run starts. Config names are resolved as the
    command line resolves them."""
    from lightning_unlearn.config_names import resolve_config_args

    try:
        _ParseOnlyCLI(UnlearningModule, ConceptStreamDataModule, run=False, args=resolve_config_args(list(args)),
                      seed_everything_default=0, save_config_callback=None,
                      parser_kwargs={"allow_abbrev": False, "exit_on_error": False})
    except _Parsed:
        return None
    except UnlearnError as error:
        return str(error)
    except (ArgumentError, SystemExit) as error:
        return _one_line(str(error)) or f"the arguments were refused ({type(error).__name__})"
    return None


def _one_line(message: str) -> str:
    """jsonargparse's (multi-line) complaint as the line that says what is wrong: a value of the
    wrong type with its key, else an option no class accepts, else an unrecognized argument."""
    lines = [line.strip().lstrip("- ") for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("Expected a") and "NoneType" not in line:  # not the union's 'or None'
            keys = [earlier for earlier in lines[:i] if earlier.startswith("Parser key")]
            return " ".join([*keys[-1:], line])
    for marker in ("not accepted", "unrecognized arguments"):
        named = [line for line in lines if marker in line]
        if named:
            return named[0]
    return " ".join(lines[:2])
