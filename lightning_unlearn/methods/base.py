"""The method interface: what an unlearning method must provide to the UnlearningModule.

A method is only a loss (plus per-request preparation). It never sees regularizers, and
regularizers never look inside it: they see parameters, gradients and the request. Nor does it
see the module: everything it may use comes in a :class:`MethodContext`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lightning_unlearn.methods.context import MethodContext

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lightning_unlearn.backbone import Backbone
    from lightning_unlearn.requests import ConceptVocabulary, Request


class UnlearningMethod:
    """Base class of unlearning losses (ESD, Concept Ablation, ...) and training-free edits (UCE)."""

    training_free: bool = False
    """True for a method that erases by a closed-form :meth:`edit` instead of a loss: the stream
    applies the edit where a request would train (no optimizer step) and refuses regularizers
    that act on training."""

    def prepare_request(self, context: MethodContext) -> None:
        """Build what this request needs (x_t banks, anchor data...) before training starts.

        Called once per request, after ``context.reference_unet`` has been frozen from the
        weights the request starts from. ``context.captions`` name the concepts being erased.
        """

    def check_stream(self, backbone: Backbone, requests: Sequence[Request], vocabulary: ConceptVocabulary) -> None:
        """Refuse, with a :class:`~lightning_unlearn.errors.SettingsError`, a stream this method
        cannot serve as configured on ``backbone``. Called once before any work or file; default: no check."""

    def loss(self, context: MethodContext, batch: dict[str, Any]) -> torch.Tensor:
        """The unlearning loss of one batch (``caption``: list[str], ``seed``: [B] tensor)."""
        raise NotImplementedError

    def edit(self, context: MethodContext) -> dict[str, torch.Tensor]:
        """A training-free method's new values of :meth:`edited_keys` for this request (computed
        from the weights the request starts from); loss-based methods have none."""
        raise NotImplementedError(f"{type(self).__name__} trains on a loss; it has no closed-form edit")

    def edited_keys(self, unet: torch.nn.Module) -> list[str]:
        """Names of the UNet weights :meth:`edit` changes (training-free methods only)."""
        raise NotImplementedError(f"{type(self).__name__} trains on a loss; it has no closed-form edit")

    def state_dict(self) -> dict[str, Any]:
        """Per-request state worth checkpointing (default: none; prepared data is rebuilt)."""
        return {}
