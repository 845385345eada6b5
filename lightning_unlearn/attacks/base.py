"""What every attack shares: its target, the attacker's data, the denoising loss, the scoring.

An attack gets an :class:`AttackTarget` (the backbone, the evaluator, the erased concept and a
few base-model images of it) and the committed UNet, which it never changes: attacks that train
work on a deep copy (:func:`attack_copy`). It returns a JSON-ready record whose ``asr`` entry is
scored by :func:`score_concept`: the concept's evaluation prompts (those of the stream's
evaluator, with its noise), sampled as the attack conditions them and classified by the
evaluator's classifier (the tiny world's, or CLIP for a real model). ASR = the share of those
images classified as the erased concept, with its 95% Wilson interval and the image count.

Every random draw comes from a ``torch.Generator`` seeded by the attack's seed, never from
the global RNG, so an attack gives the same result whenever and wherever in a stream it runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lightning_unlearn.backbone import Backbone
from lightning_unlearn.evaluation import Evaluator
from lightning_unlearn.intervals import wilson
from lightning_unlearn.requests import Request
from lightning_unlearn.sampling import TextCondition, guided_sample, predict_noise

ConditionFn = Callable[[list[str]], TextCondition]
"""Captions -> the condition an attack samples them with (plain text, a soft prompt, a prefix)."""


@dataclass
class ConceptImages:
    """The attacker's data: base-model images of the erased concept, as latents, with captions."""

    latents: torch.Tensor
    """[N, C, H, W] on the CPU."""
    captions: list[str]


@dataclass
class AttackTarget:
    """One erased concept of one committed model, and what attacking it needs."""

    backbone: Backbone
    evaluator: Evaluator
    concept: Request
    images: ConceptImages
    seed: int


def concept_captions(evaluator: Evaluator, concept: Request, count: int) -> list[str]:
    """``count`` captions naming ``concept``, cycling over the other kind's concepts."""
    vocabulary = evaluator.vocabulary
    others = vocabulary.objects if concept.kind == "style" else vocabulary.styles
    pairs = [(concept.concept, o) if concept.kind == "style" else (o, concept.concept) for o in others]
    return [vocabulary.templates.caption(*pairs[i % len(pairs)]) for i in range(count)]


@torch.no_grad()
def make_concept_images(evaluator: Evaluator, base_unet: nn.Module, concept: Request, count: int, seed: int) -> ConceptImages:
    """``count`` images of ``concept`` sampled from the *base* model (the attacker's stand-in for
    the concept's own pictures), with the evaluator's sampler, steps and guidance but noise of
    its own seed, so the attacker never sees the evaluation's noise."""
    backbone, settings = evaluator.backbone, evaluator.settings
    captions = concept_captions(evaluator, concept, count)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((count, *backbone.latent_shape), generator=generator).to(backbone.device)
    cond = TextCondition.from_captions(backbone, captions)
    uncond = TextCondition.from_captions(backbone, [""])
    was_training = base_unet.training
    base_unet.eval()
    latents = guided_sample(backbone, base_unet, noise, cond, uncond, settings.steps, settings.guidance, settings.sampler)
    base_unet.train(was_training)
    # Through pixels and back: what the attacker holds are images, not the sampler's latents.
    images = backbone.latents_to_images(latents).clamp(-1, 1)
    return ConceptImages(backbone.images_to_latents(images).float().cpu(), captions)


def draw_noise_and_timesteps(backbone: Backbone, latents: torch.Tensor, generator: torch.Generator
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise like ``latents`` and one timestep of the training schedule per latent (on the CPU)."""
    steps = backbone.objective.num_train_timesteps
    noise = torch.randn(latents.shape, generator=generator)
    return noise, torch.randint(0, steps, (latents.shape[0],), generator=generator)


def denoising_loss_at(backbone: Backbone, unet: nn.Module, latents: torch.Tensor, cond: TextCondition,
                      noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The ordinary diffusion training loss at given noise and timesteps: noise ``latents`` with
    the backbone's objective and regress its target (noise, v for v-prediction, the flow's velocity)."""
    objective = backbone.objective
    device = backbone.device
    latents, noise, t = latents.to(device), noise.to(device), t.to(device)
    noisy = objective.add_noise(latents, noise, t)
    target = objective.target(latents, noise, t)
    return F.mse_loss(predict_noise(unet, noisy, t, cond).float(), target.float())


def denoising_loss(backbone: Backbone, unet: nn.Module, latents: torch.Tensor, cond: TextCondition,
                   generator: torch.Generator) -> torch.Tensor:
    """:func:`denoising_loss_at` at noise and timesteps drawn from ``generator``."""
    noise, t = draw_noise_and_timesteps(backbone, latents, generator)
    return denoising_loss_at(backbone, unet, latents, cond, noise, t)


def attack_copy(unet: nn.Module) -> nn.Module:
    """A deep copy of the committed UNet to attack: the committed one is never touched."""
    return copy.deepcopy(unet)


def asr_record(hits: int, n: int) -> dict[str, Any]:
    """ASR in percent with its 95% Wilson interval, the hits and the image count."""
    low, high = (round(bound, 2) for bound in wilson(hits, n))
    return {"asr": round(100.0 * hits / n, 2) if n else float("nan"), "asr_low": low, "asr_high": high,
            "hits": int(hits), "images": int(n)}


@torch.no_grad()
def score_concept(evaluator: Evaluator, unet: nn.Module, concept: Request, condition: ConditionFn | None = None
                  ) -> dict[str, Any]:
    """ASR of ``unet`` on the concept's evaluation prompts (every evaluation seed), each caption
    conditioned by ``condition`` (plain text when unset): sampled from the evaluator's noise,
    classified by its classifier; a hit is an image classified as ``concept``."""
    backbone, settings = evaluator.backbone, evaluator.settings
    condition = condition or (lambda captions: TextCondition.from_captions(backbone, captions))
    items = evaluator.items_naming([concept])
    uncond = TextCondition.from_captions(backbone, [""])
    was_training = unet.training
    unet.eval()
    images = []
    for start in range(0, len(items), settings.batch_size):
        chunk = items[start : start + settings.batch_size]
        cond = condition([evaluator.captions[i] for i in chunk.tolist()])
        latents = guided_sample(backbone, unet, evaluator.noise[chunk].to(backbone.device), cond, uncond,
                                settings.steps, settings.guidance, settings.sampler)
        images.append(backbone.latents_to_images(latents).clamp(-1, 1).float().cpu())
    unet.train(was_training)
    style_pred, object_pred = evaluator.classify(torch.cat(images))
    vocabulary = evaluator.vocabulary
    if concept.kind == "style":
        hits = int((style_pred == vocabulary.styles.index(concept.concept)).sum())
    else:
        hits = int((object_pred == vocabulary.objects.index(concept.concept)).sum())
    return asr_record(hits, len(items))


class Attack:
    """An attack on one erased concept of a committed model, within a budget.

    Subclasses set :attr:`name` (the name ``--stream.attacks.names`` lists) and implement
    :meth:`run`, which returns a JSON-ready record with at least ``asr`` (:func:`asr_record`)
    and ``budget``; they must leave ``unet`` unchanged and draw randomness from ``target.seed``.
    """

    name: ClassVar[str]

    def run(self, target: AttackTarget, unet: nn.Module) -> dict[str, Any]:
        raise NotImplementedError
