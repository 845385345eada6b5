"""Unlearning methods: each is a loss plus the per-request data it needs prepared (or, training-free,
a closed-form edit), fed a :class:`MethodContext` (never the LightningModule)."""

from lightning_unlearn.methods.base import UnlearningMethod
from lightning_unlearn.methods.concept_ablation import ConceptAblation
from lightning_unlearn.methods.context import MethodContext
from lightning_unlearn.methods.esd import ESD
from lightning_unlearn.methods.uce import UCE

__all__ = ["ESD", "ConceptAblation", "MethodContext", "UCE", "UnlearningMethod"]
