"""Recipe of the tiny world's diffusion transformer: flow matching through the UNet's recipe.

``python train.py pretrain --config configs/tinyworld_dit/pretrain.yaml`` (resumes with
``--ckpt_path last``). The same data, captions, caption dropout, EMA, warm-up + cosine schedule
and validation as :class:`~lightning_unlearn.pretraining.tiny_unet.TinyUNetPretraining`; what
differs is the backbone's objective (rectified flow: x_t = (1 - s) x_0 + s eps, velocity target
eps - x_0, s ~ logit-normal; no Min-SNR weighting), the validation sampler (flow-matching Euler)
and the export (``tiny_dit.safetensors`` + ``tiny_dit.json``).
"""

from __future__ import annotations

from lightning_unlearn.pretraining.tiny_unet import TinyUNetPretraining
from lightning_unlearn.tinyworld.backbone import TINY_WEIGHTS_DIR, TinyDiTBackbone
from lightning_unlearn.tinyworld.dit import TINY_DIT_CONFIG


class TinyDiTPretraining(TinyUNetPretraining):
    """Trains the tiny DiT with flow matching on rendered images (see the module docstring)."""

    backbone_class = TinyDiTBackbone
    export_name = "tiny_dit"
    recipe = "python train.py pretrain --config configs/tinyworld_dit/pretrain.yaml"

    def __init__(
        self,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 200,
        ema_decay: float = 0.999,
        empty_caption_prob: float = 0.1,
        style_only_prob: float = 0.1,
        object_only_prob: float = 0.1,
        min_snr_gamma: float = 0.0,
        eval_steps: int = 20,
        eval_guidance: float = 4.0,
        eval_seed: int = 1234,
        export_dir: str = str(TINY_WEIGHTS_DIR),
    ) -> None:
        """
        Args:
            lr: peak AdamW learning rate (linear warm-up, then cosine decay to 10% at max_steps).
            weight_decay: AdamW weight decay.
            warmup_steps: linear warm-up steps.
            ema_decay: decay of the exponential moving average that is exported.
            empty_caption_prob: share of captions dropped to "" (classifier-free guidance).
            style_only_prob: share of partial captions naming only the style.
            object_only_prob: share of partial captions naming only the object.
            min_snr_gamma: must stay 0 (Min-SNR weighting is an epsilon-schedule notion).
            eval_steps: flow-matching Euler steps when sampling the validation grid.
            eval_guidance: classifier-free guidance scale of the validation samples.
            eval_seed: seed of the validation grid's noise.
            export_dir: folder the EMA weights and card are written to.
        """
        super().__init__(
            lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, ema_decay=ema_decay,
            empty_caption_prob=empty_caption_prob, style_only_prob=style_only_prob,
            object_only_prob=object_only_prob, min_snr_gamma=min_snr_gamma, eval_steps=eval_steps,
            eval_guidance=eval_guidance, eval_seed=eval_seed, export_dir=export_dir,
        )

    def card_model(self) -> dict:
        return {
            "model": "lightning_unlearn.denoisers.CrossAttentionDiT (diffusers.PixArtTransformer2DModel)",
            "config": dict(TINY_DIT_CONFIG),
        }

    def card_objective(self) -> dict:
        return {"objective": self.backbone.scheduler_config, "sampler": "diffusers.FlowMatchEulerDiscreteScheduler"}
