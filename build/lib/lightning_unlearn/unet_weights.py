"""Load UNet weights saved by other tools onto a backbone's UNet (``--model.unet_weights``).

Accepted, for the tiny world and for Stable Diffusion alike:

- a diffusers UNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, as
  ``UNet2DConditionModel.save_pretrained`` writes it), or a pipeline folder holding one in ``unet/``;
- a safetensors state dict: the full UNet, or only some keys (e.g. the trained cross-attention
  weights a request of this project, or another unlearning tool, saved). Keys it does not hold
  keep the backbone's values.

Pickled checkpoints (``.bin``, ``.ckpt``, ``.pt``, ``.pth``) are refused, never unpickled: they can
run code on load. The error says how to convert one to safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lightning_unlearn.atomic_io import load_weights
from lightning_unlearn.errors import UnlearnError

DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
"""The file a diffusers ``save_pretrained`` writes a model's weights to."""

PICKLED_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
"""Checkpoint formats that need unpickling, which this project never does on user input."""

CONVERT_HINT = (
    "convert it once with: python -c \"import torch, safetensors.torch as st; "
    "st.save_file(torch.load('IN', weights_only=True, map_location='cpu'), 'OUT.safetensors')\" "
    "(a diffusers folder: load it and save_pretrained(..., safe_serialization=True))"
)


class UnetWeightsError(UnlearnError, ValueError):
    """UNet weights that cannot be loaded: missing, pickled, or not fitting this UNet."""


def resolve_unet_weights(path: str | Path) -> Path:
    """The safetensors file behind ``path`` (a file, a diffusers UNet folder, or a pipeline folder)."""
    path = Path(path)
    if not path.exists():
        raise UnetWeightsError(f"UNet weights {path} do not exist")
    if path.is_dir():
        folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
        weights = folder / DIFFUSERS_WEIGHTS_NAME
        if weights.is_file():
            return weights
        if (folder / f"{DIFFUSERS_WEIGHTS_NAME}.index.json").is_file():
            raise UnetWeightsError(
                f"{folder} holds sharded UNet weights; merge the shards into one {DIFFUSERS_WEIGHTS_NAME} "
                "(load the folder with diffusers and save_pretrained(..., max_shard_size='100GB'))"
            )
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_SUFFIXES)
        if pickled:
            raise UnetWeightsError(
                f"{folder} holds only pickled weights ({pickled[0]}), which are never unpickled; {CONVERT_HINT}"
            )
        raise UnetWeightsError(f"{folder} is not a diffusers UNet folder: it has no {DIFFUSERS_WEIGHTS_NAME}")
    if path.suffix in PICKLED_SUFFIXES:
        raise UnetWeightsError(f"{path} is a pickled checkpoint, which is never unpickled; {CONVERT_HINT}")
    if path.suffix != ".safetensors":
        raise UnetWeightsError(
            f"{path} is not a safetensors file (expected a .safetensors file or a diffusers UNet folder)"
        )
    return path


def check_fits(unet: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """A :class:`UnetWeightsError` naming the first key of ``state`` the UNet lacks or shapes differently."""
    own = unet.state_dict()
    for key, value in state.items():
        if key not in own:
            raise UnetWeightsError(
                f"{source} does not fit this UNet: it has the key {key!r}, which this UNet lacks "
                f"({sum(k not in own for k in state)} of {len(state)} keys unknown)"
            )
        if tuple(own[key].shape) != tuple(value.shape):
            raise UnetWeightsError(
                f"{source} does not fit this UNet: {key} has shape {tuple(value.shape)}, "
                f"the UNet's is {tuple(own[key].shape)}"
            )


@torch.no_grad()
def load_unet_weights(unet: nn.Module, path: str | Path) -> list[str]:
    """Copy the weights at ``path`` into ``unet`` (cast to its dtypes); returns the keys loaded."""
    file = resolve_unet_weights(path)
    state = load_weights(file)
    if not state:
        raise UnetWeightsError(f"{file} holds no tensors")
    config = file.parent / "config.json"
    if file.name == DIFFUSERS_WEIGHTS_NAME and config.is_file():
        # A folder's config names the architecture: a mismatch is reported in its words first.
        saved = json.loads(config.read_text())
        ours = dict(getattr(unet, "config", {}))
        for field in ("in_channels", "cross_attention_dim", "block_out_channels", "layers_per_block"):
            if field in saved and field in ours and _plain(saved[field]) != _plain(ours[field]):
                raise UnetWeightsError(
                    f"{file.parent} is a different UNet: its {field} is {saved[field]}, "
                    f"this model's is {_plain(ours[field])}"
                )
    check_fits(unet, state, file)
    own = unet.state_dict()
    for key, value in state.items():
        own[key].copy_(value.to(own[key].dtype))
    return sorted(state)


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value
