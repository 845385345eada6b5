"""Discrete prompt search in the spirit of UnlearnDiffAtk: a few real words that undo the erasure.

The attacker prepends ``tokens`` words from the tokenizer's vocabulary to the concept's prompts
and searches them by greedy coordinate search: each iteration tries ``candidates`` random words
at one position (positions in turn) and keeps the one that most lowers the unlearned model's
denoising loss on base-model images of the concept (fixed noise and timesteps, so candidates are
compared on the same draw). Like UnlearnDiffAtk the objective needs no classifier; unlike it, the
search is gradient-free (forward passes only), so it runs on any text encoder as-is. ASR is then
scored on the evaluation prompts with the found prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_unlearn.attacks.base import (
    Attack, AttackTarget, denoising_loss_at, draw_noise_and_timesteps, score_concept,
)
from lightning_unlearn.backbone import Backbone
from lightning_unlearn.checks import at_least
from lightning_unlearn.sampling import TextCondition


@dataclass
class PromptSearchSettings:
    """``--stream.attacks.prompt``: the prefix's length and the search's budget."""

    iterations: int = 6
    """Coordinate-search iterations (the budget); each tries ``candidates`` words at one position."""
    tokens: int = 3
    """Words in the adversarial prefix."""
    candidates: int = 8
    """Random vocabulary words tried per iteration."""

    def __post_init__(self) -> None:
        at_least(self.iterations, 1, "--stream.attacks.prompt.iterations")
        at_least(self.tokens, 1, "--stream.attacks.prompt.tokens")
        at_least(self.candidates, 1, "--stream.attacks.prompt.candidates")


def vocabulary_words(tokenizer: Any) -> list[str]:
    """The tokenizer's whole-word tokens as text (alphabetic ASCII, sorted): the search space.

    Sub-word pieces (``##ing``), special tokens and punctuation are left out; if the vocabulary
    has no word of 3+ letters (a character-level tokenizer), single letters are used.
    """
    words = set()
    for token in tokenizer.get_vocab():
        if token.startswith("##") or token in tokenizer.all_special_tokens:
            continue
        text = tokenizer.convert_tokens_to_string([token]).strip()
        if text.isascii() and text.isalpha():
            words.add(text.lower())
    long_words = sorted(w for w in words if len(w) >= 3)
    return long_words or sorted(words)


def with_prefix(prefix: list[str], captions: list[str]) -> list[str]:
    """``captions`` with the words of ``prefix`` in front."""
    head = " ".join(prefix)
    return [f"{head} {caption}" for caption in captions]


def encode(backbone: Backbone, captions: list[str]) -> TextCondition:
    """A condition for one-off captions (not kept in the backbone's text cache)."""
    return TextCondition(*backbone.encode_text_uncached(captions))


class PromptSearchAttack(Attack):
    """Greedy coordinate search of a ``tokens``-word prefix over the vocabulary, ``iterations``
    iterations of ``candidates`` words, minimising the denoising loss on the concept's images."""

    name = "prompt"

    def __init__(self, settings: PromptSearchSettings | None = None) -> None:
        self.settings = settings or PromptSearchSettings()
        self._words: dict[int, list[str]] = {}

    def words(self, backbone: Backbone) -> list[str]:
        """The search space of ``backbone``'s tokenizer (built once per tokenizer)."""
        key = id(backbone.tokenizer)
        if key not in self._words:
            self._words[key] = vocabulary_words(backbone.tokenizer)
        return self._words[key]

    @torch.no_grad()
    def run(self, target: AttackTarget, unet: nn.Module) -> dict[str, Any]:
        settings, backbone, images = self.settings, target.backbone, target.images
        words = self.words(backbone)
        generator = torch.Generator().manual_seed(target.seed)
        noise, t = draw_noise_and_timesteps(backbone, images.latents, generator)
        was_training = unet.training
        unet.eval()

        def loss_of(prefix: list[str]) -> float:
            cond = encode(backbone, with_prefix(prefix, images.captions))
            return float(denoising_loss_at(backbone, unet, images.latents, cond, noise, t))

        prefix = [words[i] for i in torch.randint(len(words), (settings.tokens,), generator=generator).tolist()]
        plain = float(denoising_loss_at(backbone, unet, images.latents,
                                        TextCondition.from_captions(backbone, images.captions), noise, t))
        best = first = loss_of(prefix)
        for iteration in range(settings.iterations):
            position = iteration % settings.tokens
            for index in torch.randint(len(words), (settings.candidates,), generator=generator).tolist():
                trial = [*prefix[:position], words[index], *prefix[position + 1:]]
                loss = loss_of(trial)
                if loss < best:
                    best, prefix = loss, trial
        unet.train(was_training)
        scored = score_concept(target.evaluator, unet, target.concept,
                               lambda captions: encode(backbone, with_prefix(prefix, captions)))
        return {
            "budget": {"iterations": settings.iterations, "tokens": settings.tokens, "candidates": settings.candidates},
            **scored,
            "prefix": " ".join(prefix),
            "loss_plain": round(plain, 6), "loss_first": round(first, 6), "loss_best": round(best, 6),
            "vocabulary_words": len(words),
        }
