"""Evaluation: sample the style x object grid, classify it, and score UA / IRA / CRA.

- UA (unlearning accuracy): 100 - accuracy of the concept's own classifier on the images
  whose prompt names an erased concept (over all erased so far, and for the latest alone).
- IRA (in-domain retain accuracy): accuracy of the erased kind's classifier on the images
  whose prompt names no erased concept (other styles, when styles are erased).
- CRA (cross-domain retain accuracy): the other kind's classifier on those same images.

The eval set (prompts, noise) is built once per run; the classifier is the tiny world's, or a
CLIP zero-shot classifier from a local folder for real models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from lightning_unlearn.backbone import Backbone, check_clip_folder
from lightning_unlearn.checks import at_least, did_you_mean, non_negative
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.intervals import NAN_INTERVAL, Interval, bound_keys, mean_of_proportions, wilson
from lightning_unlearn.requests import ConceptVocabulary, Request
from lightning_unlearn.run_folder import COLLAPSE_COLUMNS, COLLAPSE_TOP_SHARE
from lightning_unlearn.sampling import SAMPLERS, TextCondition, guided_sample


@dataclass
class EvaluationSettings:
    """How each checkpoint of a stream is evaluated."""

    seeds_per_prompt: int = 1
    """Images per (style, object) prompt (UnlearnCanvas uses 5)."""
    steps: int = 20
    """Sampling steps (UNet calls per image, each on the guided pair)."""
    sampler: Literal["ddim", "dpm++"] = "ddim"
    """Solver: ``ddim``, or ``dpm++`` (DPM-Solver++ 2M, deterministic), which reaches DDIM's
    images in about half the steps."""
    guidance: float = 4.0
    """Classifier-free guidance scale."""
    batch_size: int = 96
    """Prompts sampled together."""
    seed: int = 1234
    """Seed of the evaluation noise (the same for every checkpoint of a run)."""
    classifier: str | None = None
    """A local CLIP folder for zero-shot scoring (transformers format, ``model.safetensors``;
    pickled ``pytorch_model.bin`` folders are refused); unset = the tiny world's classifier."""
    reuse_base: bool = True
    """Evaluate the base model once per (base weights, text encoder, these settings, vocabulary,
    classifier, precision) and reuse the result in every later run (``requests/00-base``)."""
    cache_dir: str | None = None
    """Where reused base evaluations are kept; unset = ``.eval_cache`` next to the run folder."""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SettingsError(f"--stream.evaluation.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        at_least(self.seeds_per_prompt, 1, "--stream.evaluation.seeds_per_prompt")
        at_least(self.steps, 1, "--stream.evaluation.steps")
        at_least(self.batch_size, 1, "--stream.evaluation.batch_size")
        non_negative(self.guidance, "--stream.evaluation.guidance")
        if self.classifier:
            # Refused here, when the settings are read: before the run folder or any file exists.
            check_clip_folder(self.classifier)


class ClipZeroShotClassifier(nn.Module):
    """CLIP from a local folder, concept names as classes: images -> (style, object) logits."""

    def __init__(self, path: str | Path, vocabulary: ConceptVocabulary) -> None:
        super().__init__()
        from transformers import CLIPModel, CLIPTokenizer

        path = check_clip_folder(path)
        # use_safetensors=True: never fall back to unpickling a pytorch_model.bin.
        self.model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        self.model.eval().requires_grad_(False)
        tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1))

        def text_features(prompts: list[str]) -> torch.Tensor:
            tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                feats = self.model.get_text_features(**tokens)
            feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
            return F.normalize(feats, dim=-1)

        self.register_buffer("style_text", text_features([f"an image in {s} style" for s in vocabulary.styles]))
        self.register_buffer("object_text", text_features([f"an image of a {o}" for o in vocabulary.objects]))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate((images + 1) / 2, size=self.image_size, mode="bicubic", align_corners=False)
        feats = self.model.get_image_features(pixel_values=(x - self.mean) / self.std)
        feats = F.normalize(feats if isinstance(feats, torch.Tensor) else feats.pooler_output, dim=-1)
        scale = self.model.logit_scale.exp()
        return scale * feats @ self.style_text.T, scale * feats @ self.object_text.T


def check_classifier_knows(vocabulary: ConceptVocabulary, all_styles: list[str], all_objects: list[str]) -> None:
    """A :class:`SettingsError` naming the first vocabulary concept the classifier cannot score
    (``--data.styles`` / ``--data.objects``), with a suggestion for a near-miss."""
    for option, names, known in (("--data.styles", vocabulary.styles, all_styles),
                                 ("--data.objects", vocabulary.objects, all_objects)):
        for name in names:
            if name not in known:
                raise SettingsError(
                    f"{option} names {name!r}{did_you_mean(name, known)}, which the classifier does not know; "
                    f"it knows {known}"
                )


class VocabularySubset(nn.Module):
    """A classifier restricted to the vocabulary's concepts, by name (columns of its logits).

    Lets a stream on the tiny world use a subset of its styles and objects while scoring with
    the classifier trained on all of them.
    """

    def __init__(self, classifier: nn.Module, all_styles: list[str], all_objects: list[str], vocabulary: ConceptVocabulary) -> None:
        super().__init__()
        check_classifier_knows(vocabulary, all_styles, all_objects)
        self.classifier = classifier
        self.register_buffer("style_cols", torch.tensor([all_styles.index(c) for c in vocabulary.styles]))
        self.register_buffer("object_cols", torch.tensor([all_objects.index(c) for c in vocabulary.objects]))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        style_logits, object_logits = self.classifier(images)
        return style_logits[:, self.style_cols], object_logits[:, self.object_cols]


class UnlearningScores(Metric):
    """Per-(style, object) counts of both classifiers; UA / IRA / CRA and the collapse indicator
    derive from them (:func:`score`).

    ``style_hits`` / ``object_hits`` / ``count``: [styles, objects] hits and images per cell;
    ``style_predicted`` [styles, objects, styles] and ``object_predicted`` [styles, objects,
    objects]: per cell, how many images each head assigned to each class (the predicted-class
    histogram the collapse indicator reads). Every state is a count that adds up across
    processes (:meth:`Evaluator.evaluate` sums every state over the processes of a DDP job once per
    evaluation), so a shared evaluation is exact.
    """

    full_state_update = False

    def __init__(self, num_styles: int, num_objects: int, **kwargs) -> None:
        super().__init__(**kwargs)
        shape = (num_styles, num_objects)
        self.add_state("style_hits", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("object_hits", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("style_predicted", torch.zeros((*shape, num_styles), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("object_predicted", torch.zeros((*shape, num_objects), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, style_pred: torch.Tensor, object_pred: torch.Tensor, style: torch.Tensor, obj: torch.Tensor) -> None:
        flat = style * self.count.shape[1] + obj
        n = self.count.numel()
        self.count += torch.bincount(flat, minlength=n).view_as(self.count)
        self.style_hits += torch.bincount(flat, weights=(style_pred == style).long(), minlength=n).long().view_as(self.count)
        self.object_hits += torch.bincount(flat, weights=(object_pred == obj).long(), minlength=n).long().view_as(self.count)
        for state, pred in ((self.style_predicted, style_pred), (self.object_predicted, object_pred)):
            classes = state.shape[-1]
            state += torch.bincount(flat * classes + pred, minlength=n * classes).view_as(state)

    def compute(self) -> dict[str, torch.Tensor]:  # the raw matrices; see :func:`score`
        return {key: getattr(self, key) for key in COUNT_KEYS}


COUNT_KEYS = ("style_hits", "object_hits", "count", "style_predicted", "object_predicted")
"""The tensors of an evaluation's counts (:class:`UnlearningScores`), each a sum over images."""
SEMANTIC_SUBSET_STRIDE = 4
"""The semantic analysis without full evaluations scores one prompt cell in this many (:meth:`Evaluator.semantic_subset`)."""


def concentration(predicted: torch.Tensor, mask: torch.Tensor, true_classes: int) -> dict[str, float | bool]:
    """How concentrated one head's predictions are on the ``mask`` cells.

    ``predicted`` [styles, objects, classes] counts; ``true_classes``: how many classes the
    masked prompts name. Returns the share of the most frequent predicted class (``top_share``),
    the entropy of the predicted-class distribution over log(classes) (``entropy``, 1 = even
    over every class the head knows, 0 = one class) and whether the head ``collapsed``
    (``top_share`` above :data:`COLLAPSE_TOP_SHARE` and above twice 1 / ``true_classes``).
    """
    histogram = predicted[mask].sum(0).double()
    total = float(histogram.sum())
    if total == 0:
        return {"top_share": float("nan"), "entropy": float("nan"), "collapsed": False}
    p = histogram / total
    top = float(p.max())
    nonzero = p[p > 0]
    classes = predicted.shape[-1]
    entropy = float(-(nonzero * nonzero.log()).sum() / math.log(classes)) if classes > 1 else 0.0
    return {"top_share": top, "entropy": entropy,
            "collapsed": top > max(COLLAPSE_TOP_SHARE, 2.0 / max(1, true_classes))}


def _pct(hits: torch.Tensor, count: torch.Tensor, mask: torch.Tensor) -> float:
    n = int(count[mask].sum())
    return float("nan") if n == 0 else 100.0 * float(hits[mask].sum()) / n


def score(
    counts: dict[str, torch.Tensor], vocabulary: ConceptVocabulary, erased: list[Request], domains: set[str]
) -> dict[str, float | dict[str, float]]:
    """UA (all erased, latest), IRA, CRA, style / object accuracy, each with its 95% interval
    (``<name>_lo``, ``<name>_hi``; :mod:`lightning_unlearn.intervals`), and per-concept
    accuracies, from hit counts.

    ``domains`` are the kinds the stream unlearns: IRA uses their classifiers, CRA the others'.
    Before any request (``erased`` empty) UA is NaN and IRA/CRA are the base model's accuracy.
    The collapse indicator (:data:`COLLAPSE_COLUMNS`, :func:`collapse_indicator`) is read on
    the retained prompts from the predicted-class histograms of ``counts``.

    Intervals: UA and UA_latest are one proportion (the erased concepts' classifier misses over
    their images: Wilson); IRA / CRA are the mean over their kinds of one classifier's accuracy
    on the retained images: Wilson for one kind, the mean of both kinds' Wilson bounds for two.
    """
    sh, oh, n = counts["style_hits"].cpu(), counts["object_hits"].cpu(), counts["count"].cpu()
    s_idx = {c: i for i, c in enumerate(vocabulary.styles)}
    o_idx = {c: i for i, c in enumerate(vocabulary.objects)}
    erased_s = torch.zeros(n.shape[0], dtype=torch.bool)
    erased_o = torch.zeros(n.shape[1], dtype=torch.bool)
    for r in erased:
        if r.kind == "style":
            erased_s[s_idx[r.concept]] = True
        else:
            erased_o[o_idx[r.concept]] = True
    retained = ~erased_s[:, None] & ~erased_o[None, :]

    def concept_mask(r: Request) -> torch.Tensor:
        m = torch.zeros_like(retained)
        if r.kind == "style":
            m[s_idx[r.concept], :] = True
        else:
            m[:, o_idx[r.concept]] = True
        return m

    def ua(requests: list[Request]) -> tuple[float, Interval]:
        hits = sum(int((sh if r.kind == "style" else oh)[concept_mask(r)].sum()) for r in requests)
        total = sum(int(n[concept_mask(r)].sum()) for r in requests)
        if total == 0:
            return float("nan"), NAN_INTERVAL
        # UA counts misses: its interval is the hit rate's, mirrored.
        low, high = wilson(total - hits, total)
        return 100.0 - 100.0 * hits / total, (low, high)

    def acc(kinds: set[str], mask: torch.Tensor) -> tuple[float, Interval]:
        hits = [(sh if k == "style" else oh)[mask] for k in sorted(kinds)]
        total = int(n[mask].sum())
        if not hits or total == 0:
            return float("nan"), NAN_INTERVAL
        value = float(np.mean([100.0 * int(h.sum()) / total for h in hits]))
        return value, mean_of_proportions([int(h.sum()) for h in hits], total)

    all_mask = torch.ones_like(retained)
    headline = {
        "UA": ua(erased),
        "UA_latest": ua(erased[-1:]),
        "IRA": acc(set(domains), retained),
        "CRA": acc({"style", "object"} - set(domains), retained),
        "style_acc": acc({"style"}, all_mask),
        "object_acc": acc({"object"}, all_mask),
    }
    metrics: dict[str, float | dict[str, float]] = {name: value for name, (value, _) in headline.items()}
    for name, (_, (low, high)) in headline.items():
        low_key, high_key = bound_keys(name)
        metrics[low_key], metrics[high_key] = low, high
    return {
        **metrics,
        **collapse_indicator(counts, retained, domains),
        "per_style": {c: _pct(sh[i], n[i], torch.ones(n.shape[1], dtype=torch.bool)) for c, i in s_idx.items()},
        "per_object": {c: _pct(oh[:, j], n[:, j], torch.ones(n.shape[0], dtype=torch.bool)) for c, j in o_idx.items()},
    }


def collapse_indicator(counts: dict[str, torch.Tensor], retained: torch.Tensor,
                       domains: set[str]) -> dict[str, float | bool | None]:
    """Per head, the concentration of its predictions on the ``retained`` prompts
    (:func:`concentration`), and ``collapsed``: whether a head UA is read with (one of
    ``domains``) collapsed, which makes UA meaningless (every image in one class is "not the
    erased concept" too). Counts without the predicted-class histograms (an older evaluation
    cache) give NaN shares and ``collapsed`` None (not measured)."""
    out: dict[str, float | bool | None] = {}
    collapsed: bool | None = False
    for kind, true_classes in (("style", int(retained.any(1).sum())), ("object", int(retained.any(0).sum()))):
        predicted = counts.get(f"{kind}_predicted")
        if predicted is None:
            out[f"{kind}_top_share"] = out[f"{kind}_entropy"] = float("nan")
            collapsed = None
            continue
        head = concentration(predicted.cpu(), retained, true_classes)
        out[f"{kind}_top_share"], out[f"{kind}_entropy"] = head["top_share"], head["entropy"]
        if collapsed is not None and kind in domains and head["collapsed"]:
            collapsed = True
    out["collapsed"] = collapsed
    return {key: out[key] for key in COLLAPSE_COLUMNS}  # the results table's columns, in its order


def _local_sum(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _local_broadcast(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class EvaluationShard:
    """Which part of the evaluation this process samples, and how the parts are summed.

    The evaluation's items are cut into batches of ``batch_size`` in one fixed order, whatever
    the number of processes; process ``rank`` samples batches ``rank, rank + world_size, ...``.
    Every item keeps its own noise and its batch, so each image is the one a single process
    samples, and the summed counts are the single process's exactly.
    """

    rank: int = 0
    world_size: int = 1
    sum: Callable[[torch.Tensor], torch.Tensor] = field(default=_local_sum, compare=False)
    """Sums a tensor over the processes (every process gets the sum; the identity for one process)."""
    broadcast: Callable[[Any], Any] = field(default=_local_broadcast, compare=False)
    """Rank 0's value of a (picklable, small) object, in every process."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size} processes")

    def take(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """This process's batches of ``batches`` (round-robin)."""
        return batches[self.rank :: self.world_size]


ONE_PROCESS = EvaluationShard()
"""The whole evaluation in this process."""


def add_counts(total: dict[str, torch.Tensor] | None, more: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key-wise sum of two counts dicts (whatever keys :class:`UnlearningScores` has)."""
    if total is None:
        return {k: v.clone() for k, v in more.items()}
    if set(total) != set(more):
        raise ValueError(f"counts with different keys: {sorted(total)} vs {sorted(more)}")
    return {k: total[k] + more[k] for k in total}


def images_to_bytes(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 (the grid picture's pixels)."""
    return ((images + 1) * 127.5).round().clamp(0, 255).byte()


class Evaluator:
    """Samples the fixed evaluation grid with a UNet and scores it."""

    def __init__(
        self, backbone: Backbone, classifier: nn.Module, vocabulary: ConceptVocabulary, settings: EvaluationSettings
    ) -> None:
        self.backbone, self.classifier, self.vocabulary, self.settings = backbone, classifier, vocabulary, settings
        ns, no, k = len(vocabulary.styles), len(vocabulary.objects), settings.seeds_per_prompt
        # Item order: seed-major, then style, then object, so the first ns*no items are one full grid.
        self.style_idx = torch.arange(ns).repeat_interleave(no).repeat(k)
        self.object_idx = torch.arange(no).repeat(ns).repeat(k)
        self.captions = [
            vocabulary.templates.caption(vocabulary.styles[s], vocabulary.objects[o])
            for s, o in zip(self.style_idx.tolist(), self.object_idx.tolist())
        ]
        gen = torch.Generator().manual_seed(settings.seed)
        self.noise = torch.randn((len(self.captions), *backbone.latent_shape), generator=gen)
        self._image_shape: tuple[int, int, int] | None = None

    def items_naming(self, requests: list[Request], seeds: int | None = None) -> torch.Tensor:
        """Indices of the evaluation items whose prompt names one of ``requests`` (first ``seeds`` seeds)."""
        s_idx = {c: i for i, c in enumerate(self.vocabulary.styles)}
        o_idx = {c: i for i, c in enumerate(self.vocabulary.objects)}
        styles = torch.tensor([s_idx[r.concept] for r in requests if r.kind == "style"], dtype=torch.long)
        objects = torch.tensor([o_idx[r.concept] for r in requests if r.kind == "object"], dtype=torch.long)
        hit = torch.isin(self.style_idx, styles) | torch.isin(self.object_idx, objects)
        per_seed = len(self.vocabulary.styles) * len(self.vocabulary.objects)
        if seeds is not None:
            hit &= torch.arange(len(self.captions)) < seeds * per_seed
        return hit.nonzero().flatten()

    def semantic_subset(self) -> torch.Tensor:
        """The fixed prompts the semantic analysis scores when a model was not fully evaluated:
        of the first seed, the (style s, object o) cells with (s + o) mod m = 0, m =
        min(:data:`SEMANTIC_SUBSET_STRIDE`, styles, objects), so every style and every object
        has prompts (16 x 12: 48 of 192, 3 per style, 4 per object)."""
        ns, no = len(self.vocabulary.styles), len(self.vocabulary.objects)
        m = max(1, min(SEMANTIC_SUBSET_STRIDE, ns, no))
        return torch.tensor([s * no + o for s in range(ns) for o in range(no) if (s + o) % m == 0], dtype=torch.long)

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the backbone decodes (one decode of a zero latent, once)."""
        if self._image_shape is None:
            with torch.no_grad():
                zero = torch.zeros((1, *self.backbone.latent_shape), device=self.backbone.device)
                self._image_shape = tuple(self.backbone.latents_to_images(zero).shape[1:])
        return self._image_shape

    def batches(self, items: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The evaluation's items (or ``items``) in batches of ``batch_size``: one fixed cut,
        whatever the number of processes sharing them."""
        order = torch.arange(len(self.captions)) if items is None else items
        return list(order.split(self.settings.batch_size))

    @torch.no_grad()
    def sample(self, unet: nn.Module, items: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] for the evaluation set, or only its ``items`` (CPU tensor)."""
        uncond = TextCondition.from_captions(self.backbone, [""])
        was_training = unet.training
        unet.eval()
        out = [self._sample_batch(unet, batch, uncond) for batch in self.batches(items)]
        unet.train(was_training)
        return torch.cat(out)

    def _sample_batch(self, unet: nn.Module, batch: torch.Tensor, uncond: TextCondition) -> torch.Tensor:
        cond = TextCondition.from_captions(self.backbone, [self.captions[i] for i in batch.tolist()])
        latents = guided_sample(
            self.backbone, unet, self.noise[batch].to(self.backbone.device), cond, uncond,
            self.settings.steps, self.settings.guidance, self.settings.sampler,
        )
        return self.backbone.latents_to_images(latents).clamp(-1, 1).float().cpu()

    @torch.no_grad()
    def evaluate(self, unet: nn.Module, items: torch.Tensor | None = None, shard: EvaluationShard = ONE_PROCESS,
                 grid: bool = True) -> tuple[dict[str, torch.Tensor], np.ndarray | None]:
        """Sample and score this process's share of the evaluation set (or of ``items``); returns
        the counts summed over every process and, with ``grid``, the grid picture (:meth:`grid`).

        Every process must call it (the sums are collective). Each batch is sampled and
        classified on its own, so a batch's images and counts are the same in any process;
        every tensor of the counts dict is summed, whatever its keys. The grid's tiles (the
        first seed's images) are gathered as uint8 by the same sum: each tile comes from one
        process, the others add zeros.
        """
        uncond = TextCondition.from_captions(self.backbone, [""])
        was_training = unet.training
        unet.eval()
        ns, no = len(self.vocabulary.styles), len(self.vocabulary.objects)
        tiles = torch.zeros((ns * no, *self.image_shape()), dtype=torch.uint8) if grid else None
        counts: dict[str, torch.Tensor] | None = None
        try:
            for batch in shard.take(self.batches(items)):
                images = self._sample_batch(unet, batch, uncond)
                counts = add_counts(counts, self.counts(images, batch))
                if tiles is not None:
                    shown = batch < ns * no
                    tiles[batch[shown]] = images_to_bytes(images[shown])
        finally:
            unet.train(was_training)
        if counts is None:  # more processes than batches: this one adds zeros
            counts = self.counts(torch.zeros((0, *self.image_shape())), torch.zeros(0, dtype=torch.long))
        counts = {k: shard.sum(v) for k, v in counts.items()}
        return counts, None if tiles is None else self.tile_grid(shard.sum(tiles))

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted style and object index of every image."""
        device = next(self.classifier.parameters()).device
        if len(images) == 0:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        preds_s, preds_o = [], []
        for start in range(0, len(images), 256):
            s_logits, o_logits = self.classifier(images[start : start + 256].to(device))
            preds_s.append(s_logits.argmax(1).cpu())
            preds_o.append(o_logits.argmax(1).cpu())
        return torch.cat(preds_s), torch.cat(preds_o)

    def counts(self, images: torch.Tensor, items: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Hit counts of the classifiers on ``images`` (in eval-set order, or of ``items``)."""
        # Summed over processes by the caller (:meth:`evaluate`), once per evaluation, not per batch.
        metric = UnlearningScores(len(self.vocabulary.styles), len(self.vocabulary.objects), sync_on_compute=False)
        style_pred, object_pred = self.classify(images)
        order = torch.arange(len(self.captions)) if items is None else items
        metric.update(style_pred, object_pred, self.style_idx[order], self.object_idx[order])
        return metric.compute()

    def grid(self, images: torch.Tensor, scale: int = 2) -> np.ndarray:
        """uint8 [H, W, 3] picture of the first seed: rows are styles, columns objects."""
        ns, no = len(self.vocabulary.styles), len(self.vocabulary.objects)
        return self.tile_grid(images_to_bytes(images[: ns * no]), scale)

    def tile_grid(self, first: torch.Tensor, scale: int = 2) -> np.ndarray:
        """The grid picture from the first seed's images as uint8 [styles * objects, C, H, W]."""
        ns, no = len(self.vocabulary.styles), len(self.vocabulary.objects)
        first = first.cpu()
        c, h, w = first.shape[1:]
        tiles = first.view(ns, no, c, h, w).permute(0, 3, 1, 4, 2).reshape(ns * h, no * w, c).numpy()
        return np.kron(tiles, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else tiles
