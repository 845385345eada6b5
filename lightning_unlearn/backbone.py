"""The backbone: a denoiser, a frozen text encoder, a latent codec and a training objective.

Everything downstream (methods, regularizers, evaluation) talks to a :class:`Backbone` and
never needs to know whether it runs the tiny world or a Stable Diffusion folder:

- :class:`DiffusersBackbone`: a diffusers-format Stable Diffusion (1.x / 2.x) folder (UNet, VAE,
  CLIP text encoder + tokenizer, scheduler), loaded from disk only, from safetensors only.
- ``lightning_unlearn.tinyworld.backbone.TinyWorldBackbone``: the shipped tiny UNet (and
  ``TinyDiTBackbone``, the shipped tiny DiT); they live with their world, which builds on this
  module (never the other way round).

The denoiser is ``backbone.unet`` whatever its architecture (a ``UNet2DConditionModel`` or a
:class:`~lightning_unlearn.denoisers.CrossAttentionDiT`, called the same way); the objective
(:mod:`lightning_unlearn.objectives`: epsilon prediction or flow matching) says how it noises,
what it predicts and how it is sampled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from lightning_unlearn.errors import UnlearnError
from lightning_unlearn.objectives import DiffusionObjective, EpsilonObjective, Scheduler
from lightning_unlearn.unet_weights import CONVERT_HINT, PICKLED_SUFFIXES


class ModelPathError(UnlearnError, ValueError):
    """A model folder (``--model.pretrained``, ``--stream.evaluation.classifier``) that does not
    exist, is not a pipeline this project supports, or holds pickled weights only."""


SUPPORTED_PIPELINES = {
    "StableDiffusionPipeline": "Stable Diffusion 1.x / 2.x",
    "PixArtAlphaPipeline": "PixArt-alpha, a DiT with T5 text",
    "PixArtSigmaPipeline": "PixArt-sigma, a DiT with T5 text",
}
"""``_class_name`` values of ``model_index.json`` the diffusers backbone serves. Other families
(SDXL's second text encoder and size conditioning, SD3's and Flux's joint attention, which has no
separate text-side cross-attention to edit, Sana's linear attention and Gemma text) would load
partly and crash mid-run, so they are refused up front."""

DENOISER_COMPONENT = {"StableDiffusionPipeline": "unet", "PixArtAlphaPipeline": "transformer",
                      "PixArtSigmaPipeline": "transformer"}
"""Folder of each supported family's denoiser (a UNet or a PixArt transformer)."""

PIXART_MAX_TOKENS = 120
"""Captions are padded or cut to this many T5 tokens on PixArt (PixArt-alpha's length; Sigma
allows 300, but padded positions are masked out of cross-attention, so a short prompt's
prediction does not depend on it)."""


def pipeline_weights(family: str) -> dict[str, str]:
    """Components of a ``family`` folder that hold weights, and the stem of their weights file
    (diffusers models: ``diffusion_pytorch_model``; transformers models: ``model``)."""
    return {DENOISER_COMPONENT[family]: "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
            "text_encoder": "model"}


def check_safetensors_weights(folder: Path, stem: str) -> None:
    """A :class:`ModelPathError` unless ``folder`` holds ``STEM.safetensors`` (or its shard index).

    Checked before any ``from_pretrained``: a folder with pickled weights only (``.bin``,
    ``.ckpt``, ...) is refused by name, with the conversion hint, and never opened.
    """
    if (folder / f"{stem}.safetensors").is_file() or (folder / f"{stem}.safetensors.index.json").is_file():
        return
    pickled = sorted(p for p in folder.iterdir() if p.suffix in PICKLED_SUFFIXES) if folder.is_dir() else []
    if pickled:
        raise ModelPathError(
            f"{pickled[0]} is a pickled checkpoint and {folder} has no {stem}.safetensors; pickled weights "
            f"are never unpickled; {CONVERT_HINT}"
        )
    raise ModelPathError(f"{folder} has no weights this project can load: it lacks {stem}.safetensors")


class Backbone(nn.Module):
    """Common interface of the tiny world and Stable Diffusion backbones."""

    unet: nn.Module
    """The denoiser (a UNet or a DiT), called as a ``UNet2DConditionModel`` is."""
    objective: DiffusionObjective
    """How the denoiser was trained: noising, regression target, samplers."""

    def __init__(self) -> None:
        super().__init__()
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def closed_vocabulary(self) -> dict[str, list[str]] | None:
        """The only concepts this model was trained on, by kind (``style``, ``object``), for a
        closed world such as the tiny one; ``None`` for an open-vocabulary model (Stable Diffusion),
        which can be prompted with any concept."""
        return None

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

    @torch.no_grad()
    def encode_text_uncached(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like :meth:`encode_text`, without caching: for one-off captions (an attack's candidate
        prompts), which would otherwise fill the cache."""
        states, mask = self._encode_uncached(list(captions))
        return states.to(self.device), None if mask is None else mask.to(self.device)

    leading_special_tokens = 1
    """Special tokens the tokenizer puts before a caption's text (CLIP's and MiniLM's start
    token; none for T5)."""

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

    # -- objective --------------------------------------------------------------------------
    @property
    def scheduler_config(self) -> dict:
        """The objective's defining settings (an epsilon model's diffusers scheduler config)."""
        return self.objective.config

    def sampling_scheduler(self) -> Scheduler:
        """A fresh first-order deterministic sampler of the objective (DDIM; flow-matching Euler
        for a flow model); stateful: one per sampling loop."""
        return self.objective.sampling_scheduler()


def backbone_label(denoiser: nn.Module, objective: str) -> str:
    """How run folders and reports name a backbone: the denoiser's class, a transformer's depth,
    and the training objective (``UNet2DConditionModel (epsilon)``, ``CrossAttentionDiT, 12
    blocks (flow-matching)``)."""
    layers = getattr(getattr(denoiser, "config", None), "num_layers", None)
    depth = f", {layers} blocks" if isinstance(layers, int) else ""
    return f"{type(denoiser).__name__}{depth} ({objective})"


def check_clip_folder(path: str | Path) -> Path:
    """Return ``path`` if it is a local transformers CLIP folder with safetensors weights, else a
    named error (``--stream.evaluation.classifier``). Nothing is loaded yet."""
    path = Path(path)
    if not path.is_dir():
        raise ModelPathError(f"CLIP classifier folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelPathError(f"CLIP classifier folder {path} is not a transformers model folder: it has no config.json")
    check_safetensors_weights(path, "model")
    return path


def check_diffusers_folder(path: str | Path) -> Path:
    """Return ``path`` if it holds a supported diffusers pipeline with safetensors weights, else a
    named error. Reads only ``model_index.json`` and file names: nothing is loaded yet."""
    path = Path(path)
    if not path.exists():
        raise ModelPathError(f"model path {path} does not exist")
    if not (path / "model_index.json").is_file():
        raise ModelPathError(f"model path {path} is not a diffusers folder: it has no model_index.json")
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelPathError(f"{path / 'model_index.json'} is not valid JSON: {err}") from None
    family = index.get("_class_name") if isinstance(index, dict) else None
    if family not in SUPPORTED_PIPELINES:
        supported = ", ".join(f"{name} ({what})" for name, what in SUPPORTED_PIPELINES.items())
        raise ModelPathError(
            f"{path} holds a {family or 'pipeline of unnamed class'} (model_index.json _class_name), which this "
            f"project does not support; supported: {supported}"
        )
    needed = (DENOISER_COMPONENT[family], "vae", "text_encoder", "tokenizer", "scheduler")
    lacking = [name for name in needed if name not in index or not (path / name).is_dir()]
    if lacking:
        raise ModelPathError(f"diffusers folder {path} lacks the components {lacking}")
    for component, stem in pipeline_weights(family).items():
        check_safetensors_weights(path / component, stem)
    return path


def pipeline_family(path: str | Path) -> str:
    """``_class_name`` of a folder :func:`check_diffusers_folder` accepted."""
    return str(json.loads((Path(path) / "model_index.json").read_text())["_class_name"])


class DiffusersBackbone(Backbone):
    """A diffusers pipeline folder: a Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``:
    UNet, CLIP text) or a PixArt-alpha / -sigma (``PixArtAlphaPipeline``, ``PixArtSigmaPipeline``:
    a :class:`~lightning_unlearn.denoisers.CrossAttentionDiT`, T5 text, its learned-variance
    channels dropped), with its VAE and scheduler; weights from safetensors only (pickled folders
    are refused). Both families are epsilon-prediction models: the objective comes from the
    folder's scheduler config, whatever the architecture."""

    def __init__(self, pretrained: str | Path, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        path = check_diffusers_folder(pretrained)
        self.family = pipeline_family(path)
        # use_safetensors=True: diffusers and transformers would otherwise fall back to unpickling
        # a .bin; the folder check above has already refused such folders by name.
        if self.family == "StableDiffusionPipeline":
            from transformers import CLIPTextModel, CLIPTokenizer

            self.unet = UNet2DConditionModel.from_pretrained(
                path, subfolder="unet", local_files_only=True, use_safetensors=True
            )
            text_encoder = CLIPTextModel.from_pretrained(
                path, subfolder="text_encoder", local_files_only=True, torch_dtype=dtype, use_safetensors=True
            )
            tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
            self.max_tokens = int(tokenizer.model_max_length)
        else:
            from transformers import AutoTokenizer, T5EncoderModel

            from lightning_unlearn.denoisers import CrossAttentionDiT

            self.unet = CrossAttentionDiT.from_pretrained(
                path, subfolder="transformer", local_files_only=True, use_safetensors=True
            )
            text_encoder = T5EncoderModel.from_pretrained(
                path, subfolder="text_encoder", local_files_only=True, torch_dtype=dtype, use_safetensors=True
            )
            tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
            self.max_tokens = PIXART_MAX_TOKENS
            self.leading_special_tokens = 0  # T5 puts no start token before the caption
        vae = AutoencoderKL.from_pretrained(
            path, subfolder="vae", local_files_only=True, torch_dtype=dtype, use_safetensors=True
        )
        vae.requires_grad_(False).eval()
        text_encoder.requires_grad_(False).eval()
        # Frozen helpers live outside the module tree: never trained, never checkpointed.
        self.__dict__.update(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "steps_offset")
        config = {k: sched[k] for k in keep if k in sched}
        config["clip_sample"] = False
        self.objective = EpsilonObjective(config)
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
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.text_encoder.device)
        if self.family == "StableDiffusionPipeline":
            # Stable Diffusion attends to every position, padding included (as it was trained).
            return self.text_encoder(ids)[0].float(), None
        # PixArt masks the padding out of T5 and out of its cross-attention, as its pipeline does.
        mask = tokens.attention_mask.to(self.text_encoder.device)
        return self.text_encoder(ids, attention_mask=mask)[0].float(), mask

    def images_to_latents(self, images: torch.Tensor) -> torch.Tensor:
        self._follow_unet()
        vae_dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(images.to(vae_dtype)).latent_dist
        return (dist.mean * self.scaling_factor).float()

    def latents_to_images(self, latents: torch.Tensor) -> torch.Tensor:
        self._follow_unet()
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scaling_factor).to(vae_dtype)).sample.float().clamp(-1, 1)


