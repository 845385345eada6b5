"""Run the configured attacks on a committed model: the record of ``attacks.json`` and the
summary columns of ``results.csv`` (:data:`lightning_unlearn.run_folder.ATTACK_COLUMNS`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from torch import nn

from lightning_unlearn.attacks.base import AttackTarget, ConceptImages, make_concept_images
from lightning_unlearn.attacks.settings import ATTACK_NAMES, AttackSettings
from lightning_unlearn.evaluation import Evaluator
from lightning_unlearn.requests import Request

SEED_STRIDE = 10_007
"""Seeds of different concepts and attacks are this far apart (no two draws share a seed)."""


class AttackRunner:
    """Attacks committed models of one stream (or run folder) with :class:`AttackSettings`.

    The attacker's images of a concept are sampled once from the base model and reused after
    every request, as are the seeds: a concept is attacked with the same data and draws wherever
    it is attacked, so its ASR across the stream compares like with like.
    """

    def __init__(self, settings: AttackSettings, evaluator: Evaluator, base_unet: Callable[[], nn.Module]) -> None:
        """
        Args:
            settings: which attacks, budgets, targets.
            evaluator: the stream's evaluator (prompts, noise, sampler, classifier).
            base_unet: makes a frozen copy of the base UNet (called once per concept needing images).
        """
        self.settings, self.evaluator, self.base_unet = settings, evaluator, base_unet
        self.attacks = settings.build()
        self._images: dict[Request, ConceptImages] = {}

    def concept_seed(self, concept: Request) -> int:
        """The concept's seed: depends on the settings' seed and the concept alone."""
        vocabulary = self.evaluator.vocabulary
        position = (vocabulary.styles.index(concept.concept) if concept.kind == "style"
                    else len(vocabulary.styles) + vocabulary.objects.index(concept.concept))
        return self.settings.seed * SEED_STRIDE * SEED_STRIDE + (position + 1) * SEED_STRIDE

    def images_of(self, concept: Request) -> ConceptImages:
        """The attacker's base-model images of ``concept`` (sampled on first use)."""
        if concept not in self._images:
            base = self.base_unet()
            self._images[concept] = make_concept_images(self.evaluator, base, concept, self.settings.images,
                                                        self.concept_seed(concept))
            del base
        return self._images[concept]

    def attack(self, unet: nn.Module, concepts: list[Request]) -> dict[str, Any]:
        """Run every attack on ``unet`` (left unchanged) for each of ``concepts``: the record of
        ``attacks.json``."""
        started = time.perf_counter()
        targets = []
        for concept in concepts:
            begun = time.perf_counter()
            seed = self.concept_seed(concept)
            results = {}
            for number, attack in enumerate(self.attacks, start=1):
                target = AttackTarget(self.evaluator.backbone, self.evaluator, concept, self.images_of(concept),
                                      seed + number)
                results[attack.name] = attack.run(target, unet)
            targets.append({"concept": concept.concept, "kind": concept.kind, "attacks": results,
                            "seconds": round(time.perf_counter() - begun, 2)})
        return {"settings": asdict(self.settings), "targets": targets,
                "seconds": round(time.perf_counter() - started, 2)}


def attack_summary(record: dict[str, Any], concept: Request) -> dict[str, Any]:
    """The results-row columns of an ``attacks.json`` record: ASR (+ 95% interval) per attack and
    relearning's steps to recover, for ``concept`` (the request's own); the images per ASR."""
    target = next(t for t in record["targets"] if t["concept"] == concept.concept and t["kind"] == concept.kind)
    row: dict[str, Any] = {}
    for name in ATTACK_NAMES:
        result = target["attacks"].get(name)
        if result is None:
            continue
        row.update({f"{name}_asr": result["asr"], f"{name}_asr_low": result["asr_low"],
                    f"{name}_asr_high": result["asr_high"]})
        row["attack_images"] = result["images"]
        if name == "relearn":
            row["relearn_steps_to_recover"] = result["steps_to_recover"]
    row["attack_seconds"] = record["seconds"]
    return row
