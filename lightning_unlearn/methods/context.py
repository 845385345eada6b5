"""MethodContext: everything an unlearning method may see of the request it serves.

The :class:`~lightning_unlearn.unlearning_module.UnlearningModule` builds one per request (in
``begin_request``, after freezing the reference copy) and hands it to the method's
``prepare_request(context)`` and ``loss(context, batch)``. A method needs nothing else from the
module, and must not import it: the context is the whole interface, so methods can be written,
tested and read without the LightningModule, the stream or the run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lightning_unlearn.backbone import Backbone
from lightning_unlearn.requests import ConceptVocabulary, Request


@dataclass(frozen=True)
class MethodContext:
    """One request, as an unlearning method sees it (fixed for the request's whole training).

    The networks are live objects -- ``unet`` is the model being trained -- but which objects,
    concepts and settings the request uses cannot be swapped under a method.
    """

    unet: nn.Module
    """The UNet being trained (gradients flow into its trainable keys)."""
    reference_unet: nn.Module
    """Frozen copy of the UNet as it stood when the request started, in ``reference_dtype``."""
    backbone: Backbone
    """Text encoding, noise schedules and latent shape (``backbone.unet`` is ``unet``)."""
    erasing: tuple[Request, ...]
    """Concepts this training erases: the request alone, or (simultaneous protocol) every
    request up to it. The request being served is the last."""
    already_erased: tuple[Request, ...]
    """Concepts already erased in the weights the request started from."""
    captions: tuple[str, ...]
    """The request's training captions (the data module's erase captions of ``erasing``)."""
    seed: int
    """Seed of this request's randomness (differs per request of a stream)."""
    run_seed: int
    """The module's ``seed`` (``--model.seed``): randomness shared by every request of a run,
    e.g. Concept Ablation's anchor images, which requests with the same anchor reuse."""
    reference_dtype: str
    """Name of the dtype the reference copies are held in (``float32``, ``bfloat16``, ``float16``)."""
    vocabulary: ConceptVocabulary
    """The stream's concepts and caption templates (the tiny world's outside a stream)."""
    cache_dir: Path | None
    """Folder where methods may cache data across the requests and runs that share it
    (the stream passes ``<run_dir>/../.anchor_cache``); ``None``: keep it in memory only."""
    base_state: Mapping[str, torch.Tensor]
    """Pretrained values of the trainable keys (CPU tensors; read them, never write them)."""
    base_unet: Callable[[], nn.Module]
    """Returns a new frozen copy of the UNet holding the *base* (pretrained) weights, in
    ``reference_dtype`` on the UNet's device: for methods that sample from the base model."""

    def __post_init__(self) -> None:
        if not self.erasing:
            raise ValueError("a MethodContext needs at least one concept to erase (the request is the last)")

    @property
    def request(self) -> Request:
        """The request being served (the last concept of ``erasing``)."""
        return self.erasing[-1]

    @property
    def device(self) -> torch.device:
        """Where the trained UNet is now (training moves the module; the context follows it)."""
        return next(self.unet.parameters()).device
