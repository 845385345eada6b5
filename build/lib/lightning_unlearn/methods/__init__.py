"""Unlearning methods: each is a loss plus the per-request data it needs prepared, fed a
:class:`MethodContext` (never the LightningModule)."""

from lightning_unlearn.methods.base import UnlearningMethod
from lightning_unlearn.methods.concept_ablation import ConceptAblation
from lightning_unlearn.methods.context import MethodContext
from lightning_unlearn.methods.esd import ESD

__all__ = ["ESD", "ConceptAblation", "MethodContext", "UnlearningMethod"]
