"""Denoising networks other than the UNet, behind the UNet's call convention.

Everything in this project calls its denoiser as a ``UNet2DConditionModel`` is called,
``net(x_t, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample``, and finds its
cross-attention as ``...attn2.to_k`` / ``...attn2.to_v`` (trainable sets, gradient projection,
UCE, LoRA targets, semantic analysis). :class:`CrossAttentionDiT` is a diffusers
``PixArtTransformer2DModel`` -- a DiT whose blocks (``transformer_blocks.N``) hold self-attention
``attn1`` and cross-attention to the text tokens ``attn2`` -- with that call convention, so all
of the above resolves on it unchanged. Its parameter names (and so its checkpoints) are
PixArt's own.

Two differences from a UNet that callers must respect:

- PixArt first maps the text encoder's states through ``caption_projection`` (an MLP), so what
  ``attn2.to_k`` multiplies is the *projected* token state: :func:`cross_attention_inputs` gives
  it for any denoiser (the identity for a UNet);
- a PixArt checkpoint trained with learned variance outputs 2 C channels (epsilon, then the
  variance interpolation); the adapter returns the first C (the prediction), which is what DDIM
  and every loss here use.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn


class CrossAttentionDiT(PixArtTransformer2DModel, PeftAdapterMixin):
    """A PixArt transformer called like a UNet (see the module docstring); peft adapters attach to it
    as to a diffusers UNet (``add_adapter``, ``fuse_lora``, ``unload_lora``)."""

    pixels_per_latent = 8
    """Image pixels per latent pixel, for PixArt-Alpha's resolution conditioning (its VAE's 8)."""

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        **_: Any,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """The prediction at (``sample``, ``timestep``) given text states [B, L, D] (and mask [B, L])."""
        batch = sample.shape[0]
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        added = None
        if self.use_additional_conditions:
            # PixArt-Alpha's micro-conditions, as its pipeline sets them for a square image.
            height, width = (sample.shape[-2] * self.pixels_per_latent, sample.shape[-1] * self.pixels_per_latent)
            added = {
                "resolution": torch.tensor([[height, width]], dtype=sample.dtype, device=sample.device).expand(batch, -1),
                "aspect_ratio": torch.tensor([[height / width]], dtype=sample.dtype, device=sample.device).expand(batch, -1),
            }
        out = super().forward(
            sample, encoder_hidden_states=encoder_hidden_states, timestep=timestep, added_cond_kwargs=added,
            encoder_attention_mask=encoder_attention_mask, return_dict=False,
        )[0]
        channels = int(self.config.in_channels)
        if out.shape[1] == 2 * channels:  # learned variance: keep the prediction, drop the sigma channels
            out = out[:, :channels]
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def cross_attention_inputs(denoiser: nn.Module, states: torch.Tensor) -> torch.Tensor:
    """The token states the denoiser's ``attn2`` key/value weights multiply, from the text
    encoder's ``states`` [..., L, D]: PixArt's ``caption_projection`` of them, else (a UNet) the
    states themselves."""
    projection = getattr(denoiser, "caption_projection", None)
    if projection is None:
        return states
    weight = next(projection.parameters())
    return projection(states.to(weight.device, weight.dtype)).to(states.dtype)
