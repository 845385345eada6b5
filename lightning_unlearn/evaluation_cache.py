"""The base model's evaluation, done once and reused by every run and study on the same base.

Every stream starts by sampling and scoring the evaluation set with the base model
(``requests/00-base``). With the same base weights, text encoder, evaluation settings,
vocabulary and classifier that evaluation is the same every time, so its result -- the
classifiers' hit counts and the grid picture -- is kept in a cache folder under a key that
fingerprints all of them::

    <cache_dir>/<key>/counts.safetensors   style_hits, object_hits, count ([styles, objects]),
                                           style_predicted, object_predicted ([styles, objects, classes])
    <cache_dir>/<key>/grid.png
    <cache_dir>/<key>/recipe.json          what the key covers, human-readable; written last

The metrics are recomputed from the counts by each run (they depend on which kinds the run
unlearns: a style stream and an object stream share one cached base evaluation). Every file is
written atomically and ``recipe.json`` last, so an entry without it is ignored (and rewritten).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_unlearn.atomic_io import load_weights, save_weights, write_json, write_png
from lightning_unlearn.evaluation import COUNT_KEYS, ONE_PROCESS, EvaluationSettings, EvaluationShard, Evaluator
from lightning_unlearn.fingerprint import base_fingerprint, state_fingerprint

if TYPE_CHECKING:
    from lightning_unlearn.unlearning_module import UnlearningModule

CACHE_FORMAT = 2
"""Bumped whenever the cached content changes meaning, so old entries are never misread
(2: the counts hold the predicted-class histograms, ``evaluation.COUNT_KEYS``)."""

NOT_IN_KEY = ("cache_dir", "reuse_base")
"""Evaluation settings that say where results are kept, not what they are."""


def default_cache_dir(run_dir: str | Path) -> Path:
    """``.eval_cache`` next to the run folder: shared by every run under the same parent
    (``runs/.eval_cache`` for the shipped configs)."""
    return Path(run_dir).resolve().parent / ".eval_cache"


def base_evaluation_recipe(
    module: UnlearningModule, evaluator: Evaluator, precision: str, device: torch.device | str
) -> dict[str, Any]:
    """Everything the base evaluation depends on, as JSON-able values.

    Args:
        module: the unlearning module; its base UNet (pretrained values of the trainable keys),
            text encoder and noise schedule are fingerprinted by
            :func:`~lightning_unlearn.fingerprint.base_fingerprint` (as Concept Ablation's anchors are).
        evaluator: gives the settings, the vocabulary and the classifier.
        precision: the trainer's precision (``32-true``, ``bf16-mixed``...): sampling runs under it.
        device: where sampling runs (a GPU's kernels do not give a CPU's images bit for bit).
    """
    from diffusers import __version__ as diffusers_version

    settings = {k: v for k, v in asdict(evaluator.settings).items() if k not in NOT_IN_KEY}
    return {
        "format": CACHE_FORMAT,
        "base": base_fingerprint(module.backbone, module.base_state()),
        "classifier": state_fingerprint(evaluator.classifier),
        "settings": settings,
        "vocabulary": json.loads(json.dumps(asdict(evaluator.vocabulary), default=str)),
        "precision": str(precision),
        "device": torch.device(device).type,
        "torch": torch.__version__,
        "diffusers": diffusers_version,
    }


def recipe_key(recipe: dict[str, Any]) -> str:
    """sha256 naming a recipe: equal keys mean the same evaluation, bit for bit."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


@dataclass
class EvaluationOutcome:
    """Hit counts and grid picture of one evaluation, and whether they came from the cache."""

    counts: dict[str, torch.Tensor]
    grid: np.ndarray | None
    """The grid picture; ``None`` on processes other than rank 0 when the result was reused."""
    reused: bool = False
    sampled_seconds: float = 0.0
    """Seconds the sampling + scoring took when it ran (for a reused result: back then)."""


class EvaluationCache:
    """A folder of evaluation results, one sub-folder per recipe key."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def entry(self, key: str) -> Path:
        return self.folder / key

    def load(self, key: str) -> EvaluationOutcome | None:
        """The cached outcome of ``key``, or ``None`` if there is no complete entry."""
        entry = self.entry(key)
        recipe_path = entry / "recipe.json"
        if not recipe_path.is_file():
            return None
        from PIL import Image

        stored = json.loads(recipe_path.read_text())
        counts = load_weights(entry / "counts.safetensors")
        if stored.get("key") != key or set(counts) != set(COUNT_KEYS):
            raise ValueError(f"evaluation cache entry {entry} is not the result of its key: delete the folder")
        with Image.open(entry / "grid.png") as image:
            grid = np.asarray(image.convert("RGB")).copy()
        return EvaluationOutcome(counts, grid, reused=True, sampled_seconds=float(stored.get("seconds", 0.0)))

    def store(self, key: str, recipe: dict[str, Any], outcome: EvaluationOutcome) -> None:
        """Write an entry atomically, ``recipe.json`` last (it marks the entry complete)."""
        entry = self.entry(key)
        save_weights({k: outcome.counts[k].detach().cpu().long() for k in COUNT_KEYS}, entry / "counts.safetensors")
        write_png(outcome.grid, entry / "grid.png")
        write_json({"key": key, "seconds": round(outcome.sampled_seconds, 3), "recipe": recipe}, entry / "recipe.json")


def evaluate_counts(
    evaluator: Evaluator,
    unet: nn.Module,
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
    cache: EvaluationCache | None = None,
    key: str | None = None,
    recipe: dict[str, Any] | None = None,
    shard: EvaluationShard = ONE_PROCESS,
) -> EvaluationOutcome:
    """Sample the evaluation set with ``unet`` and count the classifiers' hits, or reuse a cached result.

    With ``cache`` and ``key`` the result is read from the cache when present, else computed
    and stored (with ``recipe``, for people reading the cache folder). Without them it is
    always computed.

    Args:
        evaluator: the run's evaluator (prompts, noise, classifier).
        unet: the UNet to sample with.
        forward_context: wraps sampling (the trainer's precision context, e.g. bf16 autocast).
        cache: where results are kept; ``key``: which result (see :func:`recipe_key`).
        recipe: stored with a new entry; defaults to ``{}``.
        shard: this process's share of the sampling (every process of a DDP job calls this
            together); rank 0 alone reads and writes the cache and decides whether it holds the
            result. Every process gets the counts; a reused grid is rank 0's alone (``None`` elsewhere).
    """
    if cache is not None and key is not None:
        cached = cache.load(key) if shard.rank == 0 else None
        counts = shard.broadcast(None if cached is None else {k: v.cpu() for k, v in cached.counts.items()})
        if counts is not None:
            return cached if cached is not None else EvaluationOutcome(counts, None, reused=True)
    started = time.perf_counter()
    with forward_context():
        counts, grid = evaluator.evaluate(unet, shard=shard)
    outcome = EvaluationOutcome(counts, grid)
    outcome.sampled_seconds = time.perf_counter() - started
    if cache is not None and key is not None and shard.rank == 0:
        cache.store(key, recipe or {}, outcome)
    return outcome


def base_evaluation_cache(
    settings: EvaluationSettings, run_dir: str | Path
) -> EvaluationCache | None:
    """The cache the base evaluation of a run in ``run_dir`` uses, or ``None`` if reuse is off."""
    if not settings.reuse_base:
        return None
    return EvaluationCache(settings.cache_dir if settings.cache_dir else default_cache_dir(run_dir))


def evaluate_base(
    module: UnlearningModule,
    evaluator: Evaluator,
    run_dir: str | Path,
    precision: str,
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
    shard: EvaluationShard = ONE_PROCESS,
) -> EvaluationOutcome:
    """The base model's evaluation for a run in ``run_dir``: read back from the cache of
    ``evaluator.settings`` when an earlier run on the same base stored it, else sampled (and
    stored, unless ``reuse_base`` is off). Call it before the first request has trained; in a
    DDP job, in every process (``shard``)."""
    cache = base_evaluation_cache(evaluator.settings, run_dir)
    if cache is None:
        return evaluate_counts(evaluator, module.unet, forward_context, shard=shard)
    recipe = base_evaluation_recipe(module, evaluator, precision, module.device)
    key = recipe_key(recipe)
    outcome = evaluate_counts(evaluator, module.unet, forward_context, cache, key, recipe, shard=shard)
    if outcome.reused:
        rank_zero_info(f"base evaluation reused from {cache.entry(key)} (sampled once in {outcome.sampled_seconds:.1f} s)")
    return outcome
