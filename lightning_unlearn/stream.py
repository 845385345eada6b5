"""The stream: serve unlearning requests one after another, evaluating after each.

``python train.py unlearn --config configs/tinyworld/esd_styles_sequential.yaml``

For request k the runner moves the datamodule to k, lets the module freeze its reference and
prepare the method, trains ``steps_per_request`` optimizer steps on the one Trainer (so the
user's callbacks and logger persist across requests), then writes into the run folder::

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
(:mod:`lightning_unlearn.preemption`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_unlearn.callbacks.base import request_callbacks
from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.atomic_io import (
    file_sha256, load_weights, remove_stale_temporaries, save_weights, write_json, write_png, write_text,
)
from lightning_unlearn.checks import at_least
from lightning_unlearn.tinyworld.backbone import TinyWorldBackbone
from lightning_unlearn.errors import SettingsError, UnlearnError
from lightning_unlearn.evaluation import (
    ClipZeroShotClassifier, EvaluationSettings, Evaluator, VocabularySubset, check_classifier_knows, score,
)
from lightning_unlearn.evaluation_cache import evaluate_base, evaluate_counts
from lightning_unlearn.preemption import (
    EXIT_PREEMPTED, EXIT_SIGINT, EXIT_SIGTERM, PreemptionSignal, StreamStopped, requeue, stray_hpc_checkpoints,
)
from lightning_unlearn.ledger import LedgerMismatchError, read_ledger, verified_path, verify_committed_files
from lightning_unlearn.protocols import (
    MergeSettings, ProtocolName, RequestPlan, SimultaneousSettings, plan_request,
)
from lightning_unlearn.requests import ConceptVocabulary, Request
from lightning_unlearn.semantic_analysis import analyse_request
from lightning_unlearn.request_checkpoints import (
    AtomicCheckpointIO, RequestCheckpoints, clear_checkpoints, latest_checkpoint,
)
from lightning_unlearn.unlearning_module import NonFiniteLossError, UnlearningModule

RESULT_COLUMNS = (
    "request", "concept", "kind", "UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc",
    "train_steps", "cumulative_steps", "train_seconds", "eval_seconds", "drift_to_base", "drift_to_previous",
    "similarity_drop_r",
)


class RunFolderBusyError(UnlearnError, RuntimeError):
    """Another process is serving a stream into the same run folder."""


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
    accuracy drop and K/V change (``semantic.json``)."""
    checkpoint_every_n_steps: int | None = None
    """Save a Lightning checkpoint every n optimizer steps of a request into
    ``<run_dir>/checkpoints/`` (atomic; removed once the request is committed), so that a
    re-run resumes an interrupted request at its last checkpoint; unset = resume interrupted
    requests from their start. A pre-emption (SIGUSR1) checkpoints the request at its current
    step either way."""

    def __post_init__(self) -> None:
        check_run_dir(self.run_dir)
        at_least(self.evaluate_every, 1, "--stream.evaluate_every")
        if self.checkpoint_every_n_steps is not None:
            at_least(self.checkpoint_every_n_steps, 1, "--stream.checkpoint_every_n_steps")
        if self.merge is not None and self.protocol != "independent":
            raise SettingsError(
                "--stream.merge combines independently unlearned checkpoints: it needs protocol 'independent' "
                f"(--stream.protocol=independent), not {self.protocol!r}"
            )


def check_run_dir(run_dir: str | Path) -> None:
    """A :class:`SettingsError` when ``run_dir`` cannot be a run folder: empty, an existing
    file, or below one (checked before anything else, so nothing is loaded or written)."""
    if not str(run_dir).strip():
        raise SettingsError("--stream.run_dir is empty: give the run folder's path")
    path = Path(run_dir)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is an existing file" if folder == path else f"is inside {folder}, which is a file"
                raise SettingsError(f"--stream.run_dir {path} {where}, not a folder: give a folder's path")
            return


def callback_label(callback: Callback) -> str:
    """A short name for a callback in reports: its name, its log prefix, or its class with the
    options that tell instances apart (an anchor's kind and reference)."""
    name = getattr(callback, "name", None) or getattr(callback, "log_prefix", None)
    if name:
        return str(name)
    if hasattr(callback, "kind") and hasattr(callback, "reference"):
        return f"{callback.kind}_{callback.reference}"
    return type(callback).__name__


class UATargetStop(Callback):
    """Simultaneous protocol: every n steps, sample the evaluation prompts of the erased
    concepts and stop the request once their UA reaches the target (rank 0 decides)."""

    def __init__(self, evaluator: Evaluator | None, erasing: list[Request], settings: SimultaneousSettings,
                 vocabulary: ConceptVocabulary, domains: set[str]) -> None:
        self.evaluator, self.erasing, self.settings = evaluator, erasing, settings
        self.vocabulary, self.domains = vocabulary, domains
        self.items = evaluator.items_naming(erasing, settings.check_seeds) if evaluator is not None else None
        self.checks: list[dict[str, float]] = []
        self._first_step: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._first_step is None:  # the runner sets it when a request resumes mid-way
            self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        done = trainer.global_step - (self._first_step or 0)
        if done == 0 or done % self.settings.check_every_n_steps:
            return
        stop = False
        if self.evaluator is not None:
            with trainer.precision_plugin.forward_context():
                images = self.evaluator.sample(pl_module.unet, self.items)
            ua = score(self.evaluator.counts(images, self.items), self.vocabulary, self.erasing, self.domains)["UA"]
            self.checks.append({"step": done, "UA": ua})
            rank_zero_info(f"  step {done}: UA over {len(self.erasing)} concepts {ua:.1f} (target {self.settings.ua_target})")
            stop = ua >= self.settings.ua_target
        # Every rank must stop at the same step.
        if trainer.strategy.broadcast(stop, src=0):
            trainer.should_stop = True

    def record(self) -> dict[str, Any]:
        """The checks made (step, UA) and whether the target was reached."""
        reached = bool(self.checks) and self.checks[-1]["UA"] >= self.settings.ua_target
        return {"ua_target": self.settings.ua_target, "reached": reached, "checks": self.checks}


class StreamRunner:
    """Drives one Trainer through every request of a ConceptStreamDataModule."""

    def __init__(self, trainer: Trainer, module: UnlearningModule, data: ConceptStreamDataModule, settings: StreamSettings) -> None:
        """Checks what needs the settings together (the protocol with the requests, the method
        with the vocabulary) and raises a named error before any work or file."""
        self.trainer, self.module, self.data, self.settings = trainer, module, data, settings
        plan_request(data.requests, 0, settings.protocol, settings.merge is not None)
        module.method.check_stream(module.backbone, data.requests, data.vocabulary)
        if not settings.evaluation.classifier and isinstance(module.backbone, TinyWorldBackbone):
            from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

            check_classifier_knows(data.vocabulary, list(STYLES), list(OBJECTS))  # scored by the tiny classifier
        self.run_dir = Path(settings.run_dir)
        self.ledger_path = self.run_dir / "ledger.json"
        self.domains = {r.kind for r in data.requests}

    # -- files ---------------------------------------------------------------------------------
    def request_dir(self, index: int, request: Request | None) -> Path:
        """``requests/00-base`` for the base model, ``requests/NN-<concept>`` for request NN."""
        name = "00-base" if request is None else f"{index + 1:02d}-{request.slug}"
        return self.run_dir / "requests" / name

    def load_ledger(self) -> dict[str, Any]:
        """The run folder's ledger (a new one for a new folder), refused with
        :class:`LedgerMismatchError` if it is malformed, was written for another request list,
        or any file it records (weights, merges, metrics) no longer has its recorded sha256."""
        if not self.ledger_path.exists():
            return {"stream": [vars(r) for r in self.data.requests], "completed": []}
        ledger = read_ledger(self.run_dir)
        configured = [vars(r) for r in self.data.requests]
        done = [dict(concept=e["concept"], kind=e["kind"]) for e in ledger["completed"]]
        if configured[: len(done)] != done:
            raise LedgerMismatchError(
                f"{self.run_dir} was run with the requests {[d['concept'] for d in done]} first; "
                f"this config asks for {[c['concept'] for c in configured]}: use another run_dir"
            )
        # Every start, finished runs included: a changed file is refused before anything is
        # written, not built upon or reported as complete.
        verify_committed_files(self.run_dir, ledger)
        return ledger

    def results(self) -> list[dict[str, Any]]:
        path = self.run_dir / "results.json"
        return json.loads(path.read_text()) if path.exists() else []

    def write_results(self, rows: list[dict[str, Any]]) -> None:
        write_json(rows, self.run_dir / "results.json")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in row.items()})
        write_text(buf.getvalue(), self.run_dir / "results.csv")

    # -- evaluation ----------------------------------------------------------------------------
    def build_evaluator(self) -> Evaluator:
        settings = self.settings.evaluation
        vocabulary = self.data.vocabulary
        if settings.classifier:
            classifier = ClipZeroShotClassifier(settings.classifier, vocabulary)
        elif isinstance(self.module.backbone, TinyWorldBackbone):
            from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier
            from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

            classifier = VocabularySubset(TinyWorldClassifier.load(), list(STYLES), list(OBJECTS), vocabulary)
        else:
            raise SettingsError(
                "a real model needs a classifier to score its images: set "
                "--stream.evaluation.classifier=PATH to a local CLIP folder"
            )
        return Evaluator(self.module.backbone, classifier.to(self.module.device), vocabulary, settings)

    def evaluate(self, evaluator: Evaluator, erased: list[Request], out_dir: Path, step: int,
                 base: bool = False) -> tuple[dict, float]:
        started = time.perf_counter()
        # Sample under the trainer's precision (autocast for bf16-mixed), as training runs. The
        # base model's evaluation is the same for every run on this base: reused from the cache.
        context = self.trainer.precision_plugin.forward_context
        outcome = (evaluate_base(self.module, evaluator, self.run_dir, str(self.trainer.precision), context) if base
                   else evaluate_counts(evaluator, self.module.unet, context))
        metrics = score(outcome.counts, self.data.vocabulary, erased, self.domains)
        seconds = time.perf_counter() - started
        grid = outcome.grid
        write_png(grid, out_dir / "grid.png")
        write_json(metrics, out_dir / "metrics.json")
        logger = self.trainer.logger
        if logger is not None and hasattr(logger, "experiment") and hasattr(logger.experiment, "add_scalar"):
            for key in ("UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc"):
                if not math.isnan(metrics[key]):
                    logger.experiment.add_scalar(f"stream/{key}", metrics[key], step)
            logger.experiment.add_image("stream/grid", grid, step, dataformats="HWC")
            logger.experiment.flush()
        return metrics, seconds

    # -- the loop ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What ``run.json`` says about this run (read by reports and the study runner)."""
        kinds = sorted(self.domains)
        return {
            "label": self.run_dir.name,
            "protocol": self.settings.protocol,
            "merge": asdict(self.settings.merge) if self.settings.merge is not None else None,
            "method": type(self.module.method).__name__,
            "trainable": self.module.trainable,
            "callbacks": [callback_label(cb) for cb in request_callbacks(self.trainer)],
            "domain": kinds[0] if len(kinds) == 1 else "mixed",
            "requests": [vars(r) for r in self.data.requests],
            "steps_per_request": self.data.steps_per_request,
            "simultaneous": asdict(self.settings.simultaneous) if self.settings.protocol == "simultaneous" else None,
        }

    def _verified_weights(self, entry: dict[str, Any], key: str = "weights", sha_key: str = "sha256") -> dict[str, torch.Tensor]:
        return load_weights(verified_path(self.run_dir, entry[key], entry[sha_key], role=key))

    def _metrics_of(self, ledger: dict[str, Any], request_number: int) -> dict[str, Any] | None:
        """metrics.json of request ``request_number`` (0 = base), if it was evaluated."""
        entry = ledger.get("base") if request_number == 0 else ledger["completed"][request_number - 1]
        if not entry or "metrics" not in entry:
            return None
        path = self.run_dir / entry["metrics"]
        return json.loads(path.read_text()) if path.exists() else None

    def _lock_run_folder(self) -> None:
        """Hold an exclusive lock on ``run_dir/.lock`` until this process ends (rank 0 only: the
        other ranks of a DDP job share the folder with it), so two jobs never interleave writes."""
        if not self.trainer.is_global_zero or getattr(self, "_lock_file", None) is not None:
            return
        import fcntl

        handle = open(self.run_dir / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunFolderBusyError(
                f"{self.run_dir} is in use by another process serving a stream into it; wait for it or use another run_dir"
            ) from None
        self._lock_file = handle

    def run(self) -> list[dict[str, Any]]:
        """Serve every request not yet complete; returns the results table. The run folder is
        locked against other processes meanwhile (released on return or error)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock_run_folder()
        self._take_over_preemption()
        try:
            return self._serve()
        finally:
            self.preemption.restore()
            self._unlock_run_folder()

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
        # Lightning's SLURM plugin would save an HPC checkpoint and requeue on SIGUSR1 itself
        # (its signal connector reads this flag at every fit); the stream's own handler replaces it.
        environment = self.trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment):
            environment.auto_requeue = False
        self.preemption = PreemptionSignal()
        self.preemption.install()

    def _stop_if_preempted(self, resumes_at: str) -> None:
        """At a safe point outside ``fit``: stop if SIGUSR1 arrived (on any rank), saying where the
        re-run resumes."""
        if self.trainer.strategy.reduce_boolean_decision(self.preemption.requested, all=False):
            raise StreamStopped(f"the re-run resumes at {resumes_at}", EXIT_PREEMPTED, requeue=True)

    def _unlock_run_folder(self) -> None:
        handle = getattr(self, "_lock_file", None)
        if handle is not None:
            handle.close()  # closing the descriptor drops the flock
            self._lock_file = None

    def _serve(self) -> list[dict[str, Any]]:
        settings = self.settings
        protocol = settings.protocol
        merging = settings.merge is not None
        plan_request(self.data.requests, 0, protocol, merging)  # a named error for a bad combination, before any work
        # Work outside fit (base evaluation, x_t banks) runs where training will run.
        self.module.to(self.trainer.strategy.root_device)
        ledger = self.load_ledger()  # verified before anything is written
        if self.trainer.is_global_zero:
            write_json(asdict(settings), self.run_dir / "stream_settings.json")
        rows = self.results()
        completed = len(ledger["completed"])
        # Mid-request checkpoints go through atomic, weights-only IO; committed requests' are stale.
        self.checkpoint_io = AtomicCheckpointIO()
        self.trainer.strategy.checkpoint_io = self.checkpoint_io
        if self.trainer.is_global_zero:
            for done in range(completed):
                clear_checkpoints(self.run_dir, done)
            # A process killed inside an atomic write leaves its complete-but-unrenamed temporary file.
            for stale in remove_stale_temporaries(self.run_dir):
                rank_zero_info(f"removed {stale}, left by an interrupted write")
        if completed == len(self.data.requests):
            rank_zero_info(f"{self.run_dir}: all {completed} requests are already complete; nothing to do")
            return rows
        if self.trainer.is_global_zero:
            write_json(self.describe(), self.run_dir / "run.json")
        if completed and protocol == "sequential":
            last = ledger["completed"][-1]
            self.module.load_trainable_state(self._verified_weights(last), source=self.run_dir / last["weights"])
            rank_zero_info(f"resuming {self.run_dir} after request {completed}: {last['concept']}")
        elif completed:
            rank_zero_info(f"resuming {self.run_dir} at request {completed + 1} ({protocol}: it starts from the base)")

        # Request callbacks read the vocabulary from trainer.datamodule in on_request_start,
        # which for the first request comes before trainer.fit attaches it.
        self.trainer.datamodule = self.data
        evaluator = self.build_evaluator() if self.trainer.is_global_zero else None
        if "base" not in ledger and evaluator is not None:
            metrics, seconds = self.evaluate(evaluator, [], self.request_dir(0, None), step=0, base=True)
            rows = [self._row(0, None, metrics, 0, 0, 0.0, seconds)]
            base_metrics = self.request_dir(0, None) / "metrics.json"
            ledger["base"] = {"metrics": str(base_metrics.relative_to(self.run_dir)),
                              "metrics_sha256": file_sha256(base_metrics)}
            self.write_results(rows)
            write_json(ledger, self.ledger_path)

        for index in range(completed, len(self.data.requests)):
            plan = plan_request(self.data.requests, index, protocol, merging)
            request = plan.request
            self._stop_if_preempted(f"request {index + 1} ({request.concept})")
            what = request.concept if len(plan.erasing) == 1 else f"{len(plan.erasing)} concepts up to {request.concept!r}"
            rank_zero_info(f"request {index + 1}/{len(self.data.requests)} ({protocol}): unlearn {request.kind} {what}")
            seed_everything(self.module.hparams.seed + index, workers=True, verbose=False)
            # Lightning's teardown moves the module to the CPU after every fit: bring it back
            # before the reference copy and the method's per-request data are built.
            self.module.to(self.trainer.strategy.root_device)
            if plan.from_base:
                self.module.load_trainable_state(self.module.base_state(), source="the base weights")
            cap = settings.simultaneous.max_steps if protocol == "simultaneous" else self.data.steps_per_request
            self.data.set_position(index, erasing=list(plan.erasing), train_steps=cap)
            started = time.perf_counter()
            with self.trainer.precision_plugin.forward_context():
                self.module.begin_request(
                    plan, self.data.training_captions(), vocabulary=self.data.vocabulary,
                    cache_dir=self.run_dir / "anchors",
                )
            for callback in request_callbacks(self.trainer):
                callback.on_request_start(self.trainer, self.module)
            # Before fit: the method's preparation (e.g. ESD's x_t bank) is rebuilt from the seed on re-run.
            self._stop_if_preempted(f"request {index + 1} ({request.concept})")
            stopper = None
            if protocol == "simultaneous":
                stopper = UATargetStop(evaluator, list(plan.erasing), settings.simultaneous, self.data.vocabulary, self.domains)
                self.trainer.callbacks.append(stopper)
            steps_before = self.trainer.global_step
            identity = self._checkpoint_identity(plan, cap)
            # Only the first unfinished request can have been interrupted mid-way.
            resume = latest_checkpoint(self.run_dir, index, identity) if index == completed else None
            ckpt_path = None
            if resume is not None:
                ckpt_path, record = resume
                # The checkpoint restores global_step as the interrupted process counted it.
                steps_before = int(record["request_start_step"])
                rank_zero_info(f"  resuming at step {record['steps_done']} of {cap} from {ckpt_path}")
            if stopper is not None:
                stopper._first_step = steps_before
            self.trainer.fit_loop.epoch_loop.max_steps = steps_before + cap
            # Always there: it also checkpoints the step at which a pre-emption stops the request.
            saver = RequestCheckpoints(self.run_dir, settings.checkpoint_every_n_steps or None, index, identity,
                                       steps_before, self.checkpoint_io, preemption=self.preemption)
            self.trainer.callbacks.append(saver)
            not_committed = f"request {index + 1} was not committed; re-run the same command to resume"
            try:
                # weights_only: a checkpoint holds tensors and primitive containers, never code.
                self.trainer.fit(self.module, datamodule=self.data, ckpt_path=ckpt_path, weights_only=True)
            except NonFiniteLossError as error:
                self._fail(index, plan, ledger, error, step=self.trainer.global_step - steps_before + 1, cap=cap)
            except SIGTERMException:  # Lightning's SIGTERM handling: a SystemExit with status 0
                raise StreamStopped(f"interrupted: {not_committed}", EXIT_SIGTERM) from None
            except SystemExit as stop:
                # Lightning turns Ctrl+C inside fit into sys.exit(1) while handling the KeyboardInterrupt.
                if isinstance(stop.__context__, KeyboardInterrupt):
                    raise StreamStopped(f"interrupted: {not_committed}", EXIT_SIGINT) from None
                raise
            finally:
                for callback in (stopper, saver):
                    if callback is not None:
                        self.trainer.callbacks.remove(callback)
            if saver.preempted_at is not None:
                raise StreamStopped(
                    f"the re-run resumes at request {index + 1} ({request.concept}), step {saver.preempted_at} "
                    f"of {cap}", EXIT_PREEMPTED, requeue=True,
                )
            if self.trainer.interrupted:  # any other way out of fit that Lightning swallowed
                raise StreamStopped(f"interrupted: {not_committed}", EXIT_SIGTERM)
            for callback in request_callbacks(self.trainer):
                callback.on_request_end(self.trainer, self.module)
            records: dict[str, dict[str, Any]] = {}
            for callback in request_callbacks(self.trainer):
                records.update(callback.request_records())
            if stopper is not None:
                records["simultaneous"] = stopper.record()
            steps = self.trainer.global_step - steps_before
            train_seconds = time.perf_counter() - started
            if evaluator is not None:
                self.module.to(self.trainer.strategy.root_device)
                rows = self._commit(index, plan, ledger, rows, evaluator, records, steps, train_seconds)
                # Committed: its mid-request checkpoints and any earlier failure record are history.
                clear_checkpoints(self.run_dir, index)
                (self.request_dir(index, request) / "FAILED.json").unlink(missing_ok=True)
            self.trainer.strategy.barrier()
        return rows

    def _checkpoint_identity(self, plan: RequestPlan, cap: int) -> dict[str, Any]:
        """What a mid-request checkpoint must agree on with the request resuming from it."""
        return {
            "concept": plan.request.concept, "kind": plan.request.kind, "protocol": self.settings.protocol,
            "erasing": [r.concept for r in plan.erasing], "train_steps": cap, "batch_size": self.data.batch_size,
            "world_size": self.trainer.world_size, "accumulate_grad_batches": self.trainer.accumulate_grad_batches,
        }

    def _fail(self, index: int, plan: RequestPlan, ledger: dict[str, Any], error: Exception, step: int, cap: int) -> None:
        """Record that request ``index`` stopped at ``step`` and raise :class:`RequestFailedError`.

        Nothing of the request is committed: the run folder keeps the previous requests'
        weights. Its mid-request checkpoints are removed: resumed, they would bring back the
        optimizer state (learning rate included) that diverged.
        """
        request = plan.request
        failure = {**vars(request), "index": index + 1, "step": step, "train_steps": cap,
                   "protocol": self.settings.protocol, "reason": str(error),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if self.trainer.is_global_zero:
            clear_checkpoints(self.run_dir, index)
            write_json(failure, self.request_dir(index, request) / "FAILED.json")
            ledger.setdefault("failed", []).append(failure)
            write_json(ledger, self.ledger_path)
        last = f"request {index}'s" if ledger["completed"] else "the base model's"
        raise RequestFailedError(
            f"request {index + 1} ({request.kind} {request.concept!r}) stopped at step {step} of {cap}: {error}. "
            f"Nothing of it was committed ({self.run_dir} keeps {last} weights; the failure is in "
            f"{self.request_dir(index, request) / 'FAILED.json'}): fix the configuration (e.g. a smaller learning "
            "rate) and re-run the same command to retry the request from its start"
        ) from error

    def _commit(self, index: int, plan: RequestPlan, ledger: dict[str, Any], rows: list[dict[str, Any]],
                evaluator: Evaluator, records: dict[str, dict[str, Any]], steps: int, train_seconds: float) -> list[dict[str, Any]]:
        """Save, evaluate and record request ``index`` (rank 0); the ledger entry is written last."""
        request = plan.request
        out = self.request_dir(index, request)
        trained = {k: v.detach().cpu() for k, v in self.module.trainable_state().items()}
        sha = save_weights(trained, out / "weights.safetensors")
        entry: dict[str, Any] = {
            **vars(request), "index": index + 1, "weights": str((out / "weights.safetensors").relative_to(self.run_dir)),
            "sha256": sha,
        }
        manifest = {"request": vars(request), "index": index + 1, "protocol": self.settings.protocol,
                    "erasing": [r.concept for r in plan.erasing], "trainable": self.module.trainable,
                    "keys": len(self.module.trainable_keys), "sha256": sha}
        if self.settings.merge is not None:
            # The deployed model after request k: the merge of the task vectors of requests 1..k.
            earlier = [self._verified_weights(e) for e in ledger["completed"]]
            merged = self.settings.merge.merge(self.module.base_state(), [*earlier, trained])
            entry["merged"] = str((out / "merged.safetensors").relative_to(self.run_dir))
            entry["merged_sha256"] = manifest["merged_sha256"] = save_weights(merged, out / "merged.safetensors")
            manifest["merge"] = asdict(self.settings.merge)
            self.module.load_trainable_state(merged, source=out / "merged.safetensors")
        write_json(manifest, out / "manifest.json")
        last = index + 1 == len(self.data.requests)
        if not last and (index + 1) % max(1, self.settings.evaluate_every):
            metrics, eval_seconds = dict.fromkeys(("UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc"), float("nan")), 0.0
        else:
            metrics, eval_seconds = self.evaluate(evaluator, list(plan.scored_erased), out, step=index + 1)
        if self.settings.semantic_analysis and "per_style" in metrics:
            before = self._metrics_of(ledger, 0 if plan.from_base else index)
            if before is not None:
                records["semantic"] = analyse_request(
                    self.module.backbone, self.data.vocabulary, self.module.reference_unet, self.module.unet,
                    list(plan.erasing), list(plan.scored_erased), before, metrics,
                )
        for stem, record in records.items():
            write_json(record, out / f"{stem}.json")
        cumulative = (rows[-1]["cumulative_steps"] if rows else 0) + steps
        row = self._row(index + 1, request, metrics, steps, cumulative, train_seconds, eval_seconds)
        if "drift" in records:
            row["drift_to_base"] = records["drift"]["to_base"]["total"]
            row["drift_to_previous"] = records["drift"]["to_previous"]["total"]
        if "semantic" in records:
            row["similarity_drop_r"] = records["semantic"]["pearson_similarity_drop"]
        rows = [*rows, row]
        self.write_results(rows)
        if "per_style" in metrics:
            entry["metrics"] = str((out / "metrics.json").relative_to(self.run_dir))
            entry["metrics_sha256"] = file_sha256(out / "metrics.json")
        ledger["completed"].append(entry)
        write_json(ledger, self.ledger_path)
        rank_zero_info(
            "  UA {UA:.1f}  UA_latest {UA_latest:.1f}  IRA {IRA:.1f}  CRA {CRA:.1f}  "
            "({train_steps} steps, {train_seconds:.0f}s train, {eval_seconds:.0f}s eval)".format(**row)
        )
        return rows

    @staticmethod
    def _row(index: int, request: Request | None, metrics: dict, steps: int, cumulative: int,
             train_seconds: float, eval_seconds: float) -> dict[str, Any]:
        return {
            "request": index,
            "concept": "base" if request is None else request.concept,
            "kind": "" if request is None else request.kind,
            **{k: metrics[k] for k in ("UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc")},
            "train_steps": steps,
            "cumulative_steps": cumulative,
            "train_seconds": round(train_seconds, 2),
            "eval_seconds": round(eval_seconds, 2),
        }


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
        if cfg.trainer.get("default_root_dir") is None:
            cfg.trainer.default_root_dir = run_dir
        if cfg.trainer.get("logger") in (None, True):
            cfg.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=run_dir, name="tensorboard", version=""),
            )


def unlearn(args: list[str]) -> list[dict[str, Any]]:
    """Parse ``args`` as the ``unlearn`` subcommand and run the stream."""
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
