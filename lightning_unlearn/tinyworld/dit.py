"""Architecture of the tiny world's diffusion transformer (a PixArt-style DiT, flow matching).

It works on the same 12 x 16 x 16 latent as the tiny UNet (the 32 x 32 image with 2 x 2 pixel
blocks folded into channels). Every latent pixel is a token (patch size 1: 256 tokens; with
2 x 2 patches, 64 tokens, the model learnt the styles but not the objects, see docs/dit.md); each of the
``num_layers`` blocks is self-attention (``attn1``), cross-attention to the MiniLM token states
(``attn2``) and an MLP, modulated by the timestep (adaLN-single). MiniLM's 384-d states enter
through PixArt's ``caption_projection`` (``caption_channels=384``) into the model width. No
learned sigma (``out_channels`` = in_channels): the network predicts the flow's velocity.
"""

from __future__ import annotations

from typing import Any

from lightning_unlearn.denoisers import CrossAttentionDiT
from lightning_unlearn.tinyworld.text_encoder import HIDDEN_SIZE
from lightning_unlearn.tinyworld.unet import PIXEL_FOLD

TINY_DIT_HEADS = 4
TINY_DIT_HEAD_DIM = 32

TINY_DIT_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 3 * PIXEL_FOLD**2,
    "out_channels": 3 * PIXEL_FOLD**2,
    "patch_size": 1,
    "num_layers": 8,
    "num_attention_heads": TINY_DIT_HEADS,
    "attention_head_dim": TINY_DIT_HEAD_DIM,
    # PixArt's cross-attention reads the projected captions, which have the model's width.
    "cross_attention_dim": TINY_DIT_HEADS * TINY_DIT_HEAD_DIM,
    "caption_channels": HIDDEN_SIZE,
    "use_additional_conditions": False,
    "norm_type": "ada_norm_single",
    "num_embeds_ada_norm": 1000,
    "interpolation_scale": 1,
}


def build_tiny_dit(**overrides: Any) -> CrossAttentionDiT:
    """A freshly initialised tiny DiT (random weights); ``overrides`` change the config."""
    return CrossAttentionDiT(**{**TINY_DIT_CONFIG, **overrides})
