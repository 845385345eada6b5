"""How a stream scores its models: the evaluator, the per-request evaluation and its logging,
and the simultaneous protocol's early stop.

After each request (and once for the base model) the stream samples the evaluation prompts,
classifies the images and writes ``metrics.json`` and ``grid.png`` into the request's folder;
in a DDP job every process samples and scores its share of the prompts (:func:`evaluation_shard`),
the counts are summed over the processes, and rank 0 writes;
the headline numbers and the grid also go to the Trainer's logger (``stream/UA`` ...). The
logger's writer is closed when the stream ends (:meth:`StreamEvaluation.close`).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_unlearn.atomic_io import write_json, write_png
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.evaluation import (
    ClipZeroShotClassifier, EvaluationSettings, EvaluationShard, Evaluator, VocabularySubset, check_classifier_knows,
    score,
)
from lightning_unlearn.evaluation_cache import evaluate_base, evaluate_counts
from lightning_unlearn.protocols import SimultaneousSettings
from lightning_unlearn.requests import ConceptVocabulary, Request
from lightning_unlearn.run_folder import GRID_FILE, METRIC_NAMES, METRICS_FILE, RunFolder
# The stream scores a tiny-world backbone with the tiny world's classifier: this module is where a
# stream meets its world's evaluation (a composition root, see tests/test_layering.py).
from lightning_unlearn.tinyworld.backbone import TinyWorldBackbone
from lightning_unlearn.unlearning_module import UnlearningModule


def check_scorable(module: UnlearningModule, vocabulary: ConceptVocabulary, settings: EvaluationSettings) -> None:
    """A named error, before any work, when the stream's concepts cannot be scored: the tiny
    classifier knows only the tiny world's styles and objects."""
    if not settings.classifier and isinstance(module.backbone, TinyWorldBackbone):
        from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

        check_classifier_knows(vocabulary, list(STYLES), list(OBJECTS))


def build_evaluator(module: UnlearningModule, vocabulary: ConceptVocabulary, settings: EvaluationSettings) -> Evaluator:
    """The evaluator of a stream: a local CLIP folder's zero-shot classifier when
    ``settings.classifier`` is set, else the tiny world's classifier for a tiny backbone."""
    if settings.classifier:
        classifier = ClipZeroShotClassifier(settings.classifier, vocabulary)
    elif isinstance(module.backbone, TinyWorldBackbone):
        from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier
        from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

        classifier = VocabularySubset(TinyWorldClassifier.load(), list(STYLES), list(OBJECTS), vocabulary)
    else:
        raise SettingsError(
            "a real model needs a classifier to score its images: set "
            "--stream.evaluation.classifier=PATH to a local CLIP folder"
        )
    return Evaluator(module.backbone, classifier.to(module.device), vocabulary, settings)


def processes_joined(trainer: Trainer) -> bool:
    """Whether the trainer's processes can share work now: more than one, and their process
    group is up. Lightning starts the other processes of a ``ddp`` job (and joins every process of
    a SLURM job) in the first ``fit``: before it, e.g. at the base evaluation, rank 0 is alone."""
    return trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def evaluation_shard(trainer: Trainer) -> EvaluationShard:
    """This process's share of an evaluation under ``trainer``'s strategy: its rank among the
    trainer's processes, sums through the strategy's all-reduce (on the device it trains on:
    NCCL reduces CUDA tensors only) and broadcasts from rank 0; the whole evaluation while the
    processes have not joined (:func:`processes_joined`)."""
    if not processes_joined(trainer):
        return EvaluationShard()
    strategy = trainer.strategy

    def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
        return strategy.reduce(tensor.to(strategy.root_device), reduce_op="sum").cpu()

    return EvaluationShard(trainer.global_rank, trainer.world_size, sum=sum_over_processes,
                           broadcast=lambda value: strategy.broadcast(value, src=0))


class StreamEvaluation:
    """Evaluates the stream's current model into a request folder and logs the numbers.

    Built in every process of a DDP job: each samples its share, rank 0 writes and logs."""

    def takes_part(self) -> bool:
        """Whether this process evaluates now: rank 0 always; the others once the processes have
        joined (:func:`processes_joined`; the base evaluation before the first ``fit`` is rank 0's)."""
        return self.trainer.is_global_zero or processes_joined(self.trainer)

    def __init__(self, trainer: Trainer, module: UnlearningModule, evaluator: Evaluator, vocabulary: ConceptVocabulary,
                 domains: set[str], run_folder: RunFolder) -> None:
        self.trainer, self.module, self.evaluator = trainer, module, evaluator
        self.vocabulary, self.domains, self.run_folder = vocabulary, domains, run_folder
        self._writer: Any = None
        """The logger's writer once the evaluation has logged to it (closed by :meth:`close`)."""

    def evaluate(self, erased: list[Request], out_dir: Path, step: int, base: bool = False) -> tuple[dict, float]:
        """Score the module (``erased``: what it should have forgotten); rank 0 writes
        ``metrics.json`` and ``grid.png`` into ``out_dir`` and logs them at ``step``. Every
        process of a DDP job calls it together; returns (metrics, seconds) in each."""
        started = time.perf_counter()
        # Sample under the trainer's precision (autocast for bf16-mixed), as training runs. The
        # base model's evaluation is the same for every run on this base: reused from the cache.
        context = self.trainer.precision_plugin.forward_context
        shard = evaluation_shard(self.trainer)
        outcome = (evaluate_base(self.module, self.evaluator, self.run_folder.path, str(self.trainer.precision), context,
                                 shard=shard)
                   if base else evaluate_counts(self.evaluator, self.module.unet, context, shard=shard))
        metrics = score(outcome.counts, self.vocabulary, erased, self.domains)
        metrics["images"] = int(outcome.counts["count"].sum())  # what the numbers rest on
        seconds = time.perf_counter() - started
        if self.trainer.is_global_zero:
            write_png(outcome.grid, out_dir / GRID_FILE)
            write_json(metrics, out_dir / METRICS_FILE)
            self.log(metrics, outcome.grid, step)
        return metrics, seconds

    def subset_scores(self, unet: nn.Module) -> tuple[dict[str, Any], int]:
        """Per-concept accuracies of ``unet`` on the evaluator's fixed semantic subset
        (:meth:`Evaluator.semantic_subset`), sampled under the trainer's precision; returns
        (``{"per_style": ..., "per_object": ...}``, images sampled). A UNet held in another dtype
        than the trained one (a ``reference_dtype`` copy) is sampled in the trained one's."""
        dtype = next(self.module.unet.parameters()).dtype
        if next(unet.parameters()).dtype != dtype:
            unet = nn.Module.to(copy.deepcopy(unet), dtype)
        items = self.evaluator.semantic_subset()
        with self.trainer.precision_plugin.forward_context():
            images = self.evaluator.sample(unet, items)
        metrics = score(self.evaluator.counts(images, items), self.vocabulary, [], self.domains)
        return {"per_style": metrics["per_style"], "per_object": metrics["per_object"]}, len(items)

    def log(self, metrics: dict[str, Any], grid: Any, step: int) -> None:
        """Send the headline numbers and the grid to the Trainer's logger (when it takes scalars)."""
        logger = self.trainer.logger
        if logger is None or not hasattr(logger, "experiment") or not hasattr(logger.experiment, "add_scalar"):
            return
        # Lightning's teardown closes the writer after every fit; using it again reopens it.
        self._writer = logger.experiment
        for key in METRIC_NAMES:
            if not math.isnan(metrics[key]):
                self._writer.add_scalar(f"stream/{key}", metrics[key], step)
        self._writer.add_image("stream/grid", grid, step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        """Close the logger's writer if the evaluation reopened it (else its file and thread
        outlive the stream: nothing closes it after the last fit's teardown)."""
        if self._writer is not None and hasattr(self._writer, "close"):
            self._writer.close()
        self._writer = None


class UATargetStop(Callback):
    """Simultaneous protocol: every n steps, sample the evaluation prompts of the erased
    concepts and stop the request once their UA reaches the target. In a DDP job every process
    samples its share of those prompts and gets the summed counts (rank 0's decision is broadcast)."""

    def __init__(self, evaluator: Evaluator, erasing: list[Request], settings: SimultaneousSettings,
                 vocabulary: ConceptVocabulary, domains: set[str], first_step: int | None = None) -> None:
        """
        Args:
            evaluator: the stream's evaluator (in every process).
            erasing: the concepts the request erases (UA is over these).
            settings: target, check interval, seeds per check.
            vocabulary: the stream's concepts.
            domains: the request kinds of the stream (``style``, ``object``).
            first_step: the Trainer's ``global_step`` when the request started (a resumed request
                started before this process); unset = the step its ``fit`` starts at.
        """
        self.evaluator, self.erasing, self.settings = evaluator, erasing, settings
        self.vocabulary, self.domains = vocabulary, domains
        self.items = evaluator.items_naming(erasing, settings.check_seeds)
        self.checks: list[dict[str, float]] = []
        self._first_step = first_step

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._first_step is None:
            self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        done = trainer.global_step - (self._first_step or 0)
        if done == 0 or done % self.settings.check_every_n_steps:
            return
        with trainer.precision_plugin.forward_context():
            counts, _ = self.evaluator.evaluate(pl_module.unet, self.items, evaluation_shard(trainer), grid=False)
        ua = score(counts, self.vocabulary, self.erasing, self.domains)["UA"]
        self.checks.append({"step": done, "UA": ua, "images": int(counts["count"].sum())})
        rank_zero_info(f"  step {done}: UA over {len(self.erasing)} concepts {ua:.1f} (target {self.settings.ua_target})")
        stop = ua >= self.settings.ua_target
        # Every rank must stop at the same step.
        if trainer.strategy.broadcast(stop, src=0):
            trainer.should_stop = True

    def record(self) -> dict[str, Any]:
        """The checks made (step, UA) and whether the target was reached."""
        reached = bool(self.checks) and self.checks[-1]["UA"] >= self.settings.ua_target
        return {"ua_target": self.settings.ua_target, "reached": reached, "checks": self.checks}
