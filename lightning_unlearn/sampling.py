"""Guided DDIM sampling: classifier-free guidance in one batched UNet call per step.

One function serves evaluation (sample to the end) and ESD (stop part-way and return x_t, the
point of the frozen model's own trajectory that the ESD loss is computed at).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from lightning_unlearn.backbone import Backbone


@dataclass
class TextCondition:
    """Token states [B, L, D] and optional attention mask [B, L] for a batch of captions."""

    states: torch.Tensor
    mask: torch.Tensor | None = None

    @classmethod
    def from_captions(cls, backbone: Backbone, captions: list[str]) -> TextCondition:
        states, mask = backbone.encode_text(captions)
        return cls(states, mask)

    def expand(self, batch: int) -> TextCondition:
        """Repeat a single condition over a batch (used for the empty caption)."""
        if self.states.shape[0] == batch:
            return self
        mask = None if self.mask is None else self.mask.expand(batch, -1)
        return TextCondition(self.states.expand(batch, -1, -1), mask)


def cat_conditions(a: TextCondition, b: TextCondition) -> TextCondition:
    """Stack two conditions along the batch."""
    mask = None if a.mask is None or b.mask is None else torch.cat([a.mask, b.mask])
    return TextCondition(torch.cat([a.states, b.states]), mask)


def predict_noise(unet: UNet2DConditionModel, latents: torch.Tensor, t: torch.Tensor, cond: TextCondition) -> torch.Tensor:
    """eps(x_t, t, c) for a batch; ``t`` is a scalar or [B] tensor of timesteps."""
    if t.ndim == 0:
        t = t.expand(latents.shape[0])
    return unet(latents, t, encoder_hidden_states=cond.states, encoder_attention_mask=cond.mask).sample


def noise_pair(
    unet: UNet2DConditionModel, latents: torch.Tensor, t: torch.Tensor, cond: TextCondition, uncond: TextCondition
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps(x_t, t, ""), eps(x_t, t, c)): unconditional and conditional stacked into one call."""
    batch = latents.shape[0]
    both = cat_conditions(uncond.expand(batch), cond)
    eps = predict_noise(unet, torch.cat([latents, latents]), t, both)
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond, eps_cond


StepRecorder = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""Called as ``record(step_index, latents, t, eps_uncond, eps_cond)`` before each DDIM step."""


@torch.no_grad()
def ddim_sample(
    backbone: Backbone,
    unet: UNet2DConditionModel,
    noise: torch.Tensor,
    cond: TextCondition,
    uncond: TextCondition,
    num_steps: int,
    guidance: float,
    stop_after: int | None = None,
    record: StepRecorder | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run guided DDIM from ``noise``.

    Args:
        backbone: gives the noise schedule.
        unet: the UNet to sample with (the trainable one or a frozen reference).
        noise: initial latents x_T, [B, C, H, W].
        cond: the captions' condition; ``uncond`` the empty caption's.
        num_steps: DDIM steps of the full trajectory.
        guidance: classifier-free guidance scale (1.0 = no guidance).
        stop_after: if given, take only this many steps and return the latents reached.
        record: if given, sees every visited x_t with both noise predictions there.

    Returns:
        ``(latents, t)``: the final latents (x_0 if run to the end), and the timestep they sit
        at (the next one the trajectory would denoise; -1 when finished).
    """
    scheduler = backbone.sampling_scheduler()
    scheduler.set_timesteps(num_steps, device=noise.device)
    timesteps = scheduler.timesteps
    n = len(timesteps) if stop_after is None else int(stop_after)
    latents = noise
    for i, t in enumerate(timesteps[:n]):
        eps_uncond, eps_cond = noise_pair(unet, latents, t, cond, uncond)
        if record is not None:
            record(i, latents, t, eps_uncond, eps_cond)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents).prev_sample
    t_next = timesteps[n] if n < len(timesteps) else torch.tensor(-1, device=noise.device)
    return latents, t_next
