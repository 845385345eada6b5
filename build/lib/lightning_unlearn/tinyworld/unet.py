"""Architecture of the tiny world's text-conditional UNet (a ``diffusers.UNet2DConditionModel``).

The UNet works on a 12 x 16 x 16 "latent": the 32 x 32 RGB image with each 2 x 2 pixel block
folded into channels (``pixel_unshuffle``). That fold is lossless and free, stands where Stable
Diffusion's VAE stands, and makes every convolution 4x cheaper on a CPU. Cross-attention (the
``attn2`` layers ESD edits) sits at the 8 x 8 and 4 x 4 levels and in the middle block, fed by
MiniLM's 384-d token states, as CLIP's feed Stable Diffusion's.
"""

from __future__ import annotations

from typing import Any

from diffusers import UNet2DConditionModel

from lightning_unlearn.tinyworld.text_encoder import HIDDEN_SIZE

PIXEL_FOLD = 2
"""Side of the pixel block folded into channels."""

TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 3 * PIXEL_FOLD**2,
    "out_channels": 3 * PIXEL_FOLD**2,
    "block_out_channels": (32, 64, 128),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "cross_attention_dim": HIDDEN_SIZE,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


def build_tiny_unet(**overrides: Any) -> UNet2DConditionModel:
    """A freshly initialised tiny UNet (random weights); ``overrides`` change the config."""
    return UNet2DConditionModel(**{**TINY_UNET_CONFIG, **overrides})
