"""Guided sampling: classifier-free guidance in one batched UNet call per step.

- :func:`ddim_sample` serves ESD (stop part-way and return x_t, the point of the frozen
  model's own trajectory that the ESD loss is computed at) and DDIM evaluation; it runs the
  backbone objective's first-order sampler (DDIM, or flow-matching Euler on a flow model);
- :func:`guided_sample` samples to x_0 with a named solver: ``ddim`` or ``dpm++``
  (DPM-Solver++ 2M, deterministic, multistep: one UNet call per step like DDIM, but second
  order, so about half the steps reach the same images).

Both run the same loop (:func:`guided_trajectory`) around :func:`noise_pair`.
:func:`seeded_noise` and :func:`per_sample_randint` draw per-sample randomness that depends on
each sample's seed alone (shared by the methods).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import UNet2DConditionModel

from lightning_unlearn.backbone import Backbone
from lightning_unlearn.objectives import SAMPLERS, Scheduler  # noqa: F401  (SAMPLERS re-exported)


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


def seeded_noise(seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal latent per seed, on the CPU; sample i depends only on seeds[i].

    Methods draw their starting noise this way so that how a batch is split (DDP ranks, batch
    size, sampling chunks) never changes any sample.
    """
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def per_sample_randint(seeds: torch.Tensor, high: int) -> torch.Tensor:
    """One integer in [0, high) per seed; entry i depends only on seeds[i]."""
    return torch.cat([torch.randint(0, high, (1,), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def predict_noise(unet: UNet2DConditionModel, latents: torch.Tensor, t: torch.Tensor, cond: TextCondition) -> torch.Tensor:
    """The denoiser's output at (x_t, t, c) for a batch -- epsilon for an epsilon model, the
    velocity for a flow model (the backbone's objective); ``t`` is a scalar or [B] tensor."""
    if t.ndim == 0:
        t = t.expand(latents.shape[0])
    dtype = next(unet.parameters()).dtype
    if dtype != latents.dtype:
        # A reference held in bf16/fp16 called with fp32 latents: cast the inputs to its dtype
        # and the prediction back, so callers (bank targets, DDIM steps) stay in fp32.
        eps = unet(latents.to(dtype), t, encoder_hidden_states=cond.states.to(dtype),
                   encoder_attention_mask=cond.mask).sample
        return eps.to(latents.dtype)
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
    latents = guided_trajectory(scheduler, unet, noise, cond, uncond, guidance, timesteps[:n], record)
    t_next = timesteps[n] if n < len(timesteps) else torch.tensor(-1, device=noise.device)
    return latents, t_next


def guided_trajectory(
    scheduler: Scheduler,
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    cond: TextCondition,
    uncond: TextCondition,
    guidance: float,
    timesteps: Sequence[torch.Tensor],
    record: StepRecorder | None = None,
) -> torch.Tensor:
    """Step ``latents`` through ``timesteps`` with guided noise: one UNet call per step.

    ``scheduler`` must have had ``set_timesteps`` called; multistep solvers keep their history
    in it, so use a fresh one per trajectory.
    """
    for i, t in enumerate(timesteps):
        eps_uncond, eps_cond = noise_pair(unet, latents, t, cond, uncond)
        if record is not None:
            record(i, latents, t, eps_uncond, eps_cond)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


Sampler = Literal["ddim", "dpm++"]
"""Solvers :func:`guided_sample` knows (the backbone's objective builds them)."""


def solver_scheduler(backbone: Backbone, sampler: Sampler) -> Scheduler:
    """A fresh scheduler of the named solver for the backbone's objective (see
    :meth:`~lightning_unlearn.objectives.DiffusionObjective.solver_scheduler`)."""
    return backbone.objective.solver_scheduler(sampler)


@torch.no_grad()
def guided_sample(
    backbone: Backbone,
    unet: UNet2DConditionModel,
    noise: torch.Tensor,
    cond: TextCondition,
    uncond: TextCondition,
    num_steps: int,
    guidance: float,
    sampler: Sampler = "ddim",
) -> torch.Tensor:
    """Sample x_0 from ``noise`` with classifier-free guidance and the named solver.

    Args:
        backbone: gives the noise schedule.
        unet: the UNet to sample with.
        noise: initial latents x_T, [B, C, H, W].
        cond: the captions' condition; ``uncond`` the empty caption's.
        num_steps: solver steps (UNet calls, each on the conditional and unconditional batch).
        guidance: classifier-free guidance scale (1.0 = no guidance).
        sampler: ``ddim`` or ``dpm++``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    scheduler = solver_scheduler(backbone, sampler)
    scheduler.set_timesteps(num_steps, device=noise.device)
    # Flow-matching schedulers start at unit noise and have no init_noise_sigma.
    latents = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    return guided_trajectory(scheduler, unet, latents, cond, uncond, guidance, scheduler.timesteps)
