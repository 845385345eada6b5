"""Recipe of the tiny world's diffusion transformer: flow matching through the UNet's recipe.

``python train.py pretrain --config configs/tinyworld_dit/pretrain.yaml`` (resumes with
``--ckpt_path last``). The same data, captions, caption dropout, EMA, warm-up + cosine schedule
and validation as :class:`~lightning_unlearn.pretraining.tiny_unet.TinyUNetPretraining`; what
differs is the backbone's objective (rectified flow: x_t = (1 - s) x_0 + s eps, velocity target
eps - x_0, s ~ logit-normal; no Min-SNR weighting), the validation sampler (flow-matching Euler)
and the export (``tiny_dit.safetensors`` + ``tiny_dit.json``).
"""

from __future__ import annotations

from typing import Any

from lightning_unlearn.pretraining.tiny_unet import TinyUNetPretraining
from lightning_unlearn.tinyworld.backbone import TinyDiTBackbone
from lightning_unlearn.tinyworld.dit import TINY_DIT_CONFIG


class TinyDiTPretraining(TinyUNetPretraining):
    """Trains the tiny DiT with flow matching on rendered images (see the module docstring)."""

    backbone_class = TinyDiTBackbone
    export_name = "tiny_dit"
    recipe = "python train.py pretrain --config configs/tinyworld_dit/pretrain.yaml"

    def __init__(self, lr: float = 5e-4, min_snr_gamma: float = 0.0, **kwargs: Any) -> None:
        """
        Args:
            lr: peak AdamW learning rate (lower than the UNet's 1e-3: transformers diverge there).
            min_snr_gamma: must stay 0 (Min-SNR weighting is an epsilon-schedule notion).
            kwargs: the rest of :class:`~lightning_unlearn.pretraining.tiny_unet.TinyUNetPretraining`'s
                settings, with its defaults.
        """
        super().__init__(lr=lr, min_snr_gamma=min_snr_gamma, **kwargs)

    def card_model(self) -> dict:
        return {
            "model": "lightning_unlearn.denoisers.CrossAttentionDiT (diffusers.PixArtTransformer2DModel)",
            "config": dict(TINY_DIT_CONFIG),
        }

    def card_objective(self) -> dict:
        return {"objective": self.backbone.scheduler_config, "sampler": "diffusers.FlowMatchEulerDiscreteScheduler"}
