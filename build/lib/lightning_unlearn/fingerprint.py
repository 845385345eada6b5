"""Fingerprints of weights: sha256 digests that name a model's state bit for bit.

Caches key their entries by these (Concept Ablation's anchor images, the base evaluation), so
an entry made on one base model is never served to another. Generic code: it knows backbones
and state dicts, nothing of methods or of the LightningModule.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lightning_unlearn.backbone import Backbone


def hash_state(digest: Any, state: Mapping[str, torch.Tensor]) -> None:
    """Feed a state dict into ``digest`` (a hashlib object): names, dtypes, shapes and bytes,
    sorted by name."""
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}|{tensor.dtype}|{tuple(state[key].shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy())


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, sorted by name)."""
    digest = hashlib.sha256()
    hash_state(digest, module.state_dict())
    return digest.hexdigest()


def base_fingerprint(backbone: Backbone, base_state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the base model: the backbone's UNet with ``base_state`` (the pretrained values
    of the trainable keys) over whatever a stream has trained since, its text encoder, and its
    noise schedule.
    """
    digest = hashlib.sha256()
    digest.update(type(backbone).__name__.encode())
    digest.update(json.dumps(backbone.scheduler_config, sort_keys=True, default=str).encode())
    # Only the trainable keys ever move during a stream; the rest of the UNet still is the base.
    unet_state = {**backbone.unet.state_dict(), **base_state}
    hash_state(digest, unet_state)
    text_encoder = getattr(backbone, "text_encoder", None)
    if isinstance(text_encoder, nn.Module):
        hash_state(digest, text_encoder.state_dict())
    return digest.hexdigest()
