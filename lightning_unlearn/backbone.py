"""The backbone: a UNet, a frozen text encoder, a latent codec and a noise schedule.

Everything downstream (methods, regularizers, evaluation) talks to a :class:`Backbone` and
never needs to know whether it runs the tiny world or a Stable Diffusion folder:

- :class:`DiffusersBackbone`: any diffusers-format Stable Diffusion folder (UNet, VAE, CLIP
  text encoder + tokenizer, scheduler), loaded from disk only.
- ``lightning_unlearn.tinyworld.backbone.TinyWorldBackbone``: the shipped tiny UNet; it lives
  with its world, which builds on this module (never the other way round).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn

from lightning_unlearn.errors import UnlearnError


class ModelPathError(UnlearnError, ValueError):
    """A ``--model.pretrained`` path that does not exist or is not a diffusers folder."""


class Backbone(nn.Module):
    """Common interface of the tiny world and Stable Diffusion backbones."""

    unet: UNet2DConditionModel

    def __init__(self) -> None:
        super().__init__()
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    # -- text -------------------------------------------------------------------------------
    def _encode_uncached(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token states [B, L, D] (and a mask [B, L] or ``None``) for captions.

        The text encoder is frozen, so each distinct caption is encoded once and cached.
        """
        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            states, mask = self._encode_uncached(missing)
            for i, caption in enumerate(missing):
                self._text_cache[caption] = (
                    states[i].detach().cpu(),
                    None if mask is None else mask[i].detach().cpu(),
                )
        device = self.device
        states = torch.stack([self._text_cache[c][0] for c in captions]).to(device)
        masks = [self._text_cache[c][1] for c in captions]
        mask = None if masks[0] is None else torch.stack(masks).to(device)  # type: ignore[arg-type]
        return states, mask

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` becomes, special tokens excluded."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- latents ----------------------------------------------------------------------------
    def images_to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], [B, 3, H, W] -> latents the UNet denoises."""
        raise NotImplementedError

    def latents_to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1], [B, 3, H, W]."""
        raise NotImplementedError

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one latent."""
        cfg = self.unet.config
        return (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # -- noise schedule ---------------------------------------------------------------------
    def training_scheduler(self) -> DDPMScheduler:
        """The forward-noising schedule the UNet was trained with."""
        return DDPMScheduler.from_config(self.scheduler_config)

    def sampling_scheduler(self) -> DDIMScheduler:
        """A fresh DDIM sampler over the same schedule (stateful: one per sampling loop)."""
        return DDIMScheduler.from_config(self.scheduler_config)

    scheduler_config: dict


def check_diffusers_folder(path: str | Path) -> Path:
    """Return ``path`` if it holds a diffusers Stable Diffusion pipeline, else a named error."""
    path = Path(path)
    if not path.exists():
        raise ModelPathError(f"model path {path} does not exist")
    if not (path / "model_index.json").is_file():
        raise ModelPathError(f"model path {path} is not a diffusers folder: it has no model_index.json")
    needed = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    index = json.loads((path / "model_index.json").read_text())
    lacking = [name for name in needed if name not in index or not (path / name).is_dir()]
    if lacking:
        raise ModelPathError(f"diffusers folder {path} lacks the components {lacking}")
    return path


class DiffusersBackbone(Backbone):
    """A Stable Diffusion (1.x first) folder: UNet, VAE, CLIP text encoder + tokenizer, scheduler."""

    def __init__(self, pretrained: str | Path, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer

        path = check_diffusers_folder(pretrained)
        self.unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True, torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", local_files_only=True, torch_dtype=dtype
        )
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
        vae.requires_grad_(False).eval()
        text_encoder.requires_grad_(False).eval()
        # Frozen helpers live outside the module tree: never trained, never checkpointed.
        self.__dict__.update(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "steps_offset")
        self.scheduler_config = {k: sched[k] for k in keep if k in sched}
        self.scheduler_config["clip_sample"] = False
        self.scaling_factor = float(vae.config.scaling_factor)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        return (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))

    def _follow_unet(self) -> None:
        # The frozen VAE and text encoder sit outside the module tree (so Lightning never
        # casts or checkpoints them); they follow the UNet's device when first needed there.
        device = self.device
        if self.vae.device != device:
            self.vae.to(device)
            self.text_encoder.to(device)

    def _encode_uncached(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._follow_unet()
        tokens = self.tokenizer(
            captions,
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        states = self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]
        return states.float(), None

    def images_to_latents(self, images: torch.Tensor) -> torch.Tensor:
        self._follow_unet()
        vae_dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(images.to(vae_dtype)).latent_dist
        return (dist.mean * self.scaling_factor).float()

    def latents_to_images(self, latents: torch.Tensor) -> torch.Tensor:
        self._follow_unet()
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scaling_factor).to(vae_dtype)).sample.float().clamp(-1, 1)
