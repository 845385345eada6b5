"""The tiny world's backbone: its UNet, MiniLM token states, and a lossless pixel fold
(2 x 2 blocks into channels) as the "VAE".

Built on the generic :class:`~lightning_unlearn.backbone.Backbone`; the layers above (the
unlearning module, the stream, the pretraining recipes) pick it, generic code never does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from lightning_unlearn.atomic_io import load_weights
from lightning_unlearn.backbone import Backbone
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES
from lightning_unlearn.tinyworld.text_encoder import MiniLMTextEncoder
from lightning_unlearn.tinyworld.unet import PIXEL_FOLD, build_tiny_unet

TINY_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""Where the tiny world's pretrained UNet and classifier ship (``lightning_unlearn/weights``)."""


class TinyWorldBackbone(Backbone):
    """Tiny UNet + MiniLM + pixel fold; weights from ``weights`` or the shipped ones."""

    def __init__(self, unet: UNet2DConditionModel | None = None, weights: str | Path | None = None) -> None:
        super().__init__()
        self.fold = PIXEL_FOLD
        if unet is None:
            unet = build_tiny_unet()
            path = Path(weights) if weights is not None else TINY_WEIGHTS_DIR / "tiny_unet.safetensors"
            state = load_weights(path)
            missing, unexpected = unet.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"{path} is not a tiny-world UNet checkpoint: {len(missing)} missing keys "
                    f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
                )
        self.unet = unet
        # Kept out of the module tree so checkpoints and .to() never touch the frozen encoder.
        self.__dict__["text_encoder"] = MiniLMTextEncoder()
        self.scheduler_config = dict(
            num_train_timesteps=1000,
            beta_schedule="squaredcos_cap_v2",
            prediction_type="epsilon",
            clip_sample=False,
        )

    def closed_vocabulary(self) -> dict[str, list[str]]:
        """The tiny UNet was trained on its world's 16 styles and 12 objects, and knows nothing else."""
        return {"style": list(STYLES), "object": list(OBJECTS)}

    @property
    def tokenizer(self):
        return self.text_encoder.tokenizer

    def _encode_uncached(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.text_encoder(captions)

    def images_to_latents(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.fold)

    def latents_to_images(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.fold)
