"""The tiny world's backbones: its UNet (epsilon prediction) or its DiT (flow matching), MiniLM
token states, and a lossless pixel fold (2 x 2 blocks into channels) as the "VAE".

Built on the generic :class:`~lightning_unlearn.backbone.Backbone`; the layers above (the
unlearning module, the stream, the pretraining recipes) pick it, generic code never does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_unlearn.atomic_io import load_weights
from lightning_unlearn.backbone import Backbone
from lightning_unlearn.objectives import EpsilonObjective, FlowMatchingObjective
from lightning_unlearn.tinyworld.dit import build_tiny_dit
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES
from lightning_unlearn.tinyworld.text_encoder import MiniLMTextEncoder
from lightning_unlearn.tinyworld.unet import PIXEL_FOLD, build_tiny_unet

TINY_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""Where the tiny world's pretrained UNet and classifier ship (``lightning_unlearn/weights``)."""


class TinyWorldBackbone(Backbone):
    """Tiny UNet + MiniLM + pixel fold; weights from ``weights`` or the shipped ones."""

    architecture = "UNet"
    weights_file = "tiny_unet.safetensors"
    """The shipped weights, in :data:`TINY_WEIGHTS_DIR`."""

    def __init__(self, unet: torch.nn.Module | None = None, weights: str | Path | None = None) -> None:
        super().__init__()
        self.fold = PIXEL_FOLD
        if unet is None:
            unet = self.build_denoiser()
            path = Path(weights) if weights is not None else TINY_WEIGHTS_DIR / self.weights_file
            state = load_weights(path)
            missing, unexpected = unet.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"{path} is not a tiny-world {self.architecture} checkpoint: {len(missing)} missing keys "
                    f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
                )
        self.unet = unet
        # Kept out of the module tree so checkpoints and .to() never touch the frozen encoder.
        self.__dict__["text_encoder"] = MiniLMTextEncoder()
        self.objective = self.build_objective()

    @classmethod
    def build_denoiser(cls) -> torch.nn.Module:
        """A freshly initialised denoiser of this world (random weights)."""
        return build_tiny_unet()

    def build_objective(self):
        """The objective the shipped weights were trained with: DDPM epsilon, capped cosine schedule."""
        return EpsilonObjective(dict(
            num_train_timesteps=1000,
            beta_schedule="squaredcos_cap_v2",
            prediction_type="epsilon",
            clip_sample=False,
        ))

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


class TinyDiTBackbone(TinyWorldBackbone):
    """The tiny world with its diffusion transformer (``tiny_dit.safetensors``, flow matching)
    in place of the UNet; same text encoder, latent and vocabulary."""

    architecture = "DiT"
    weights_file = "tiny_dit.safetensors"

    @classmethod
    def build_denoiser(cls) -> torch.nn.Module:
        return build_tiny_dit()

    def build_objective(self) -> FlowMatchingObjective:
        """Rectified flow, velocity prediction, evenly spaced Euler sampling (shift 1)."""
        return FlowMatchingObjective(num_train_timesteps=1000, shift=1.0, timestep_sampling="logit-normal")


TINY_DIT_12_LAYERS = 12
"""Blocks of the deeper shipped DiT (``tiny_dit_12.safetensors``)."""


class TinyDiT12Backbone(TinyDiTBackbone):
    """The tiny DiT made 12 blocks deep and trained on (``tiny_dit_12.safetensors``): the shipped
    8-block weights deepened without changing what they compute, then 4000 more flow-matching
    steps; the one tiny DiT that meets the 90% object bar (docs/dit.md). About 1.5 times the 8-block
    model's time a step; same objective, text encoder, latent and vocabulary."""

    weights_file = "tiny_dit_12.safetensors"

    @classmethod
    def build_denoiser(cls) -> torch.nn.Module:
        return build_tiny_dit(num_layers=TINY_DIT_12_LAYERS)
