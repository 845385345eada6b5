"""Learned embedding (textual-inversion style): a soft prompt that brings the concept back.

The model's weights stay fixed; the attacker learns ``tokens`` vectors inserted into the text
encoder's output (after its first token: the caption's start; the sequence keeps its length), by the denoising loss on base-model
images of the concept with their captions. Then the concept's evaluation prompts are sampled with
the same vectors inserted, and ASR is scored. It works at the token-state level, so it needs no
access to the text encoder's inside and runs the same on MiniLM (tiny world) and CLIP (Stable
Diffusion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_unlearn.attacks.base import Attack, AttackTarget, denoising_loss, score_concept
from lightning_unlearn.checks import at_least, positive
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.sampling import TextCondition


@dataclass
class EmbeddingSettings:
    """``--stream.attacks.embedding``: the soft prompt's size and optimisation budget."""

    steps: int = 15
    """Optimizer steps on the soft prompt (the budget)."""
    tokens: int = 4
    """Vectors in the soft prompt."""
    lr: float = 5e-2
    """Adam learning rate of the soft prompt."""
    batch_size: int = 4
    """Concept images per step."""

    def __post_init__(self) -> None:
        at_least(self.steps, 1, "--stream.attacks.embedding.steps")
        # The soft prompt takes the place of trailing padding, so it must leave room for a caption.
        at_least(self.tokens, 1, "--stream.attacks.embedding.tokens")
        if self.tokens > 8:
            raise SettingsError(f"--stream.attacks.embedding.tokens must be <= 8 (they replace trailing padding), "
                                f"got {self.tokens}")
        positive(self.lr, "--stream.attacks.embedding.lr")
        at_least(self.batch_size, 1, "--stream.attacks.embedding.batch_size")


def with_soft_prompt(cond: TextCondition, prompt: torch.Tensor) -> TextCondition:
    """``cond`` with the [k, D] ``prompt`` inserted after each caption's first token state.

    The last k states drop off, so the length stays the same as the unconditional branch's
    (classifier-free guidance stacks both): they are padding for any caption k tokens shorter
    than the encoder's maximum (the tiny world's 16 tokens, CLIP's 77).
    """
    batch, length, k = cond.states.shape[0], cond.states.shape[1], prompt.shape[0]
    soft = prompt.to(cond.states.dtype).unsqueeze(0).expand(batch, -1, -1)
    states = torch.cat([cond.states[:, :1], soft, cond.states[:, 1 : length - k]], dim=1)
    if cond.mask is None:
        return TextCondition(states)
    ones = torch.ones(batch, k, dtype=cond.mask.dtype, device=cond.mask.device)
    return TextCondition(states, torch.cat([cond.mask[:, :1], ones, cond.mask[:, 1 : length - k]], dim=1))


class EmbeddingAttack(Attack):
    """Optimises a soft prompt of ``tokens`` vectors for ``steps`` steps against the concept's
    images (the UNet frozen), then scores ASR on the evaluation prompts carrying it."""

    name = "embedding"

    def __init__(self, settings: EmbeddingSettings | None = None) -> None:
        self.settings = settings or EmbeddingSettings()

    def run(self, target: AttackTarget, unet: nn.Module) -> dict[str, Any]:
        settings, backbone = self.settings, target.backbone
        generator = torch.Generator().manual_seed(target.seed)
        images = target.images
        cond_all = TextCondition.from_captions(backbone, images.captions)
        # Start at the scale of real token states, so the UNet sees inputs of a familiar size.
        scale = float(cond_all.states.float().std())
        init = torch.randn((settings.tokens, cond_all.states.shape[-1]), generator=generator) * scale
        prompt = nn.Parameter(init.to(backbone.device))
        optimizer = torch.optim.Adam([prompt], lr=settings.lr * scale)
        # The UNet is only read: its parameters need no gradient (and must not collect one).
        flags = {name: p.requires_grad for name, p in unet.named_parameters()}
        unet.requires_grad_(False)
        was_training = unet.training
        unet.eval()
        losses = []
        try:
            for _ in range(settings.steps):
                pick = torch.randperm(len(images.captions), generator=generator)[: settings.batch_size]
                index = pick.to(cond_all.states.device)
                cond = TextCondition(cond_all.states[index], None if cond_all.mask is None else cond_all.mask[index])
                loss = denoising_loss(backbone, unet, images.latents[pick], with_soft_prompt(cond, prompt), generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss))
        finally:
            for name, p in unet.named_parameters():
                p.requires_grad_(flags[name])
            unet.train(was_training)
        learned = prompt.detach()
        scored = score_concept(target.evaluator, unet, target.concept,
                               lambda captions: with_soft_prompt(TextCondition.from_captions(backbone, captions), learned))
        return {
            "budget": {"steps": settings.steps, "tokens": settings.tokens, "lr": settings.lr,
                       "batch_size": settings.batch_size},
            **scored,
            "loss_first": round(losses[0], 6), "loss_last": round(losses[-1], 6),
        }
