"""The method interface: what an unlearning method must provide to the UnlearningModule.

A method is only a loss (plus per-request preparation). It never sees regularizers, and
regularizers never look inside it: they see parameters, gradients and the request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lightning_unlearn.requests import ConceptVocabulary, Request
    from lightning_unlearn.unlearning_module import UnlearningModule


class UnlearningMethod:
    """Base class of unlearning losses (ESD, Concept Ablation, ...)."""

    def prepare_request(self, module: UnlearningModule, captions: list[str]) -> None:
        """Build what this request needs (x_t banks, anchor data...) before training starts.

        Called once per request, after ``module.reference_unet`` has been frozen from the
        weights the request starts from. ``captions`` name the concept being erased.
        """

    def check_stream(self, module: UnlearningModule, requests: Sequence[Request], vocabulary: ConceptVocabulary) -> None:
        """Refuse, with a :class:`~lightning_unlearn.errors.SettingsError`, a stream this method
        cannot serve as configured. Called once before any work or file; default: no check."""

    def loss(self, module: UnlearningModule, batch: dict[str, Any]) -> torch.Tensor:
        """The unlearning loss of one batch (``caption``: list[str], ``seed``: [B] tensor)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Per-request state worth checkpointing (default: none; prepared data is rebuilt)."""
        return {}
